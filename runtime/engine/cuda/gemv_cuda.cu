// The decode GEMV of the CUDA backend (GemvBf16Cuda, its fused SwiGLU / QKV / residual
// epilogues and RowNorm inputs, model_ops_cuda.h): launch plans and launches of the kernels in
// gemv_kernels.cuh.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/launch.h"
#include "runtime/engine/cuda/gemv_kernels.cuh"
#include "runtime/engine/cuda/model_ops_cuda.h"

namespace resa::cuda {
namespace {

using gemv_internal::GemvKernel;
using gemv_internal::GemvMmaKernel;
using gemv_internal::GemvNormArgs;
using gemv_internal::GemvRowsPerWarp;
using gemv_internal::kEpiArgMax;
using gemv_internal::kEpiQkvRope;
using gemv_internal::kEpiResidual;
using gemv_internal::kEpiStore;
using gemv_internal::kEpiSwiGlu;
using gemv_internal::kMmaTileRows;
using gemv_internal::kThreads;
using gemv_internal::kWarps;
using gemv_internal::LegacyGemvKernel;

// Dispatch of GemvKernel over (rows, loads per lane); R follows from rows.
template <int M, typename XT, int EPI = kEpiStore>
cudaError_t LaunchGemvKernel(int loads, const cudaLaunchConfig_t& cfg, const __nv_bfloat16* w,
                             const XT* x, int n, int k, int split, float* y,
                             __nv_bfloat16* act = nullptr, const QkvRopeParams& rope = {},
                             const GemvNormArgs& nf = {}) {
  constexpr int R = GemvRowsPerWarp(M);
  auto launch = [&](auto kernel) {
    return cudaLaunchKernelEx(&cfg, kernel, w, x, n, k, split, y, act, rope, nf);
  };
  if constexpr (M == 1 && (EPI == kEpiSwiGlu || EPI == kEpiQkvRope)) {
    if (nf.norm.squares != nullptr) {
      if (loads <= 2) return launch(GemvKernel<M, R, 2, XT, EPI, true>);
      if (loads <= 4) return launch(GemvKernel<M, R, 4, XT, EPI, true>);
      return launch(GemvKernel<M, R, 8, XT, EPI, true>);
    }
  }
  if constexpr (M == 1) {
    if (loads <= 2) return launch(GemvKernel<M, R, 2, XT, EPI>);
    if (loads <= 4) return launch(GemvKernel<M, R, 4, XT, EPI>);
    return launch(GemvKernel<M, R, 8, XT, EPI>);
  } else {
    if (loads <= 2) return launch(GemvKernel<M, R, 2, XT, EPI>);
    return launch(GemvKernel<M, R, 4, XT, EPI>);
  }
}

// Dispatch of GemvMmaKernel over k steps per load batch (2, 4, 8); NORM: a RowNorm consumer.
template <bool INTERLEAVE, typename XT, int EPI, bool NORM>
cudaError_t LaunchGemvMmaSteps(const GemvPlan& plan, const cudaLaunchConfig_t& cfg,
                               const __nv_bfloat16* w, const XT* x, int rows, int n, int k,
                               float* y, __nv_bfloat16* act, const QkvRopeParams& rope,
                               const GemvNormArgs& nf) {
  const int u = plan.loads_per_lane, s = plan.k_split;
  auto launch = [&](auto kernel) {
    return cudaLaunchKernelEx(&cfg, kernel, w, x, rows, n, k, s, y, act, rope, nf);
  };
  if (u <= 2) return launch(GemvMmaKernel<2, XT, EPI, INTERLEAVE, NORM>);
  if (u <= 4) return launch(GemvMmaKernel<4, XT, EPI, INTERLEAVE, NORM>);
  return launch(GemvMmaKernel<8, XT, EPI, INTERLEAVE, NORM>);
}

// ... over RowNorm inputs (the SwiGLU and QKV epilogues) ...
template <bool INTERLEAVE, typename XT, int EPI>
cudaError_t LaunchGemvMmaNorm(const GemvPlan& plan, const cudaLaunchConfig_t& cfg,
                              const __nv_bfloat16* w, const XT* x, int rows, int n, int k,
                              float* y, __nv_bfloat16* act, const QkvRopeParams& rope,
                              const GemvNormArgs& nf) {
  if constexpr (EPI == kEpiSwiGlu || EPI == kEpiQkvRope) {
    if (nf.norm.squares != nullptr) {
      return LaunchGemvMmaSteps<INTERLEAVE, XT, EPI, true>(plan, cfg, w, x, rows, n, k, y, act,
                                                           rope, nf);
    }
  }
  return LaunchGemvMmaSteps<INTERLEAVE, XT, EPI, false>(plan, cfg, w, x, rows, n, k, y, act, rope,
                                                        nf);
}

// ... and over the k order: interleaved batches for bf16 x only (with fp32 x, two MMAs a step,
// the interleaved kernel needs 136 registers at 8 steps, one block a multiprocessor).
template <typename XT, int EPI = kEpiStore>
cudaError_t LaunchGemvMmaKernel(const GemvPlan& plan, const cudaLaunchConfig_t& cfg,
                                const __nv_bfloat16* w, const XT* x, int rows, int n, int k,
                                float* y, __nv_bfloat16* act = nullptr,
                                const QkvRopeParams& rope = {}, const GemvNormArgs& nf = {}) {
  if constexpr (std::is_same_v<XT, __nv_bfloat16>) {
    if (plan.interleave) {
      return LaunchGemvMmaNorm<true, XT, EPI>(plan, cfg, w, x, rows, n, k, y, act, rope, nf);
    }
  }
  return LaunchGemvMmaNorm<false, XT, EPI>(plan, cfg, w, x, rows, n, k, y, act, rope, nf);
}

// The launch configuration of a GEMV plan (PDL per GemvOptions::overlap_previous and
// ProgrammaticLaunch()).
struct GemvLaunch {
  cudaLaunchAttribute attr[1];
  cudaLaunchConfig_t cfg = {};
  GemvLaunch(const GemvPlan& plan, const GemvOptions& o, cudaStream_t stream) {
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.gridDim = dim3(unsigned(plan.blocks));
    cfg.blockDim = dim3(kThreads);
    cfg.stream = stream;
    cfg.attrs = attr;
    cfg.numAttrs = o.overlap_previous || ProgrammaticLaunch() ? 1 : 0;
  }
  GemvLaunch(const GemvLaunch&) = delete;
};

template <typename XT>
absl::Status LaunchLegacyGemv(const __nv_bfloat16* w, const XT* x, int rows, int n, int k, float* y,
                              cudaStream_t stream) {
  const int64_t want_blocks = 4 * int64_t(MultiprocessorCount());
  int split = 1;
  const int per_warp = GemvRowsPerWarp(rows);
  auto blocks = [&](int s) {
    const int64_t rows_per_block = int64_t(per_warp) * (kWarps / s);
    return (n + rows_per_block - 1) / rows_per_block;
  };
  while (split < kWarps && blocks(split) < want_blocks && (k / 8) / (split * 2) >= 32) split *= 2;
  const unsigned grid = unsigned(blocks(split));
  switch (rows) {
    case 1:
      LegacyGemvKernel<1, XT><<<grid, kThreads, 0, stream>>>(w, x, n, k, split, y);
      break;
    case 2:
      LegacyGemvKernel<2, XT><<<grid, kThreads, 0, stream>>>(w, x, n, k, split, y);
      break;
    case 3:
      LegacyGemvKernel<3, XT><<<grid, kThreads, 0, stream>>>(w, x, n, k, split, y);
      break;
    case 4:
      LegacyGemvKernel<4, XT><<<grid, kThreads, 0, stream>>>(w, x, n, k, split, y);
      break;
    case 5:
      LegacyGemvKernel<5, XT><<<grid, kThreads, 0, stream>>>(w, x, n, k, split, y);
      break;
    case 6:
      LegacyGemvKernel<6, XT><<<grid, kThreads, 0, stream>>>(w, x, n, k, split, y);
      break;
    case 7:
      LegacyGemvKernel<7, XT><<<grid, kThreads, 0, stream>>>(w, x, n, k, split, y);
      break;
    default:
      LegacyGemvKernel<8, XT><<<grid, kThreads, 0, stream>>>(w, x, n, k, split, y);
      break;
  }
  return CheckLaunch("LegacyGemvKernel");
}

template <typename XT>
absl::Status LaunchGemv(const __nv_bfloat16* w, const XT* x, int rows, int n, int k, float* y,
                        cudaStream_t stream, const GemvOptions& o) {
  if (rows < 1 || rows > kGemvMaxRows || n <= 0 || k <= 0 || k % 8 != 0 ||
      (reinterpret_cast<uintptr_t>(w) | reinterpret_cast<uintptr_t>(x)) % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("GemvBf16Cuda: bad shape rows ", rows, " n ", n,
                                                   " k ", k, " (k % 8 == 0, 16-byte aligned)"));
  }
  const bool split_ok =
      o.k_split == 0 || o.k_split == 1 || o.k_split == 2 || o.k_split == 4 || o.k_split == 8;
  if (!split_ok || o.loads_per_lane < 0 || o.loads_per_lane > 8 || o.k_order < 0 || o.k_order > 2) {
    return absl::InvalidArgumentError(absl::StrCat("GemvBf16Cuda: bad options k_split ", o.k_split,
                                                   " loads_per_lane ", o.loads_per_lane,
                                                   " k_order ", o.k_order));
  }
  if (o.legacy) return LaunchLegacyGemv(w, x, rows, n, k, y, stream);
  const GemvPlan plan = PlanGemv(rows, n, k, o);
  const GemvLaunch launch(plan, o, stream);
  const cudaLaunchConfig_t& cfg = launch.cfg;
  const int u = plan.loads_per_lane, s = plan.k_split;
  if (plan.tensor_cores) {
    return CudaStatus(LaunchGemvMmaKernel<XT>(plan, cfg, w, x, rows, n, k, y),
                      "launching GemvMmaKernel");
  }
  cudaError_t err;
  switch (rows) {
    case 1:
      err = LaunchGemvKernel<1, XT>(u, cfg, w, x, n, k, s, y);
      break;
    case 2:
      err = LaunchGemvKernel<2, XT>(u, cfg, w, x, n, k, s, y);
      break;
    case 3:
      err = LaunchGemvKernel<3, XT>(u, cfg, w, x, n, k, s, y);
      break;
    case 4:
      err = LaunchGemvKernel<4, XT>(u, cfg, w, x, n, k, s, y);
      break;
    case 5:
      err = LaunchGemvKernel<5, XT>(u, cfg, w, x, n, k, s, y);
      break;
    case 6:
      err = LaunchGemvKernel<6, XT>(u, cfg, w, x, n, k, s, y);
      break;
    case 7:
      err = LaunchGemvKernel<7, XT>(u, cfg, w, x, n, k, s, y);
      break;
    default:
      err = LaunchGemvKernel<8, XT>(u, cfg, w, x, n, k, s, y);
      break;
  }
  if (err != cudaSuccess) return CudaStatus(err, "launching GemvKernel");
  return CheckLaunch("GemvKernel");
}

// The tensor-core kernel's plan (rows >= 2): 16-row tiles, 8 / k_split of them a block.
GemvPlan PlanGemvMma(int n, int k, const GemvOptions& o) {
  const int64_t tiles = (int64_t(n) + kMmaTileRows - 1) / kMmaTileRows;
  // Calibrated on the H200 sweeps of `resa-bench kernels --gemv --gemv-sweep` at 2 and 8 rows
  // over the 1.5B and 7B layer shapes, the fused twins (SwiGLU, QKV-RoPE) included, since the
  // model runs those. Up to 512 tiles (every per-layer matrix but gate_up) a tile's k goes to all
  // 8 warps of a block and a lane loads 8 steps at once, or 2 where 8 would need a second wave
  // (7B qkv, 288 blocks: its QKV twin 12.3 -> 11.6 us against 4 steps); long rows (k >=
  // kGemvInterleaveMinK: the down projections) deal their batches round-robin
  // (GemvOptions::k_order; 1.5B / 7B down at 8 rows 12.6 -> 10.9 / 37.8 -> 34.7 us). More tiles
  // (gate_up, lm_head): 4 warps a tile, 4 steps, interleaved (7B gate_up's SwiGLU twin at 8 rows
  // 67.5 -> 63.9 us, 1.5B lm_head 116.6 -> 109.3 us, against 2 steps contiguous).
  const bool few = tiles <= 512;
  GemvPlan p;
  p.tensor_cores = true;
  p.k_split = o.k_split != 0 ? o.k_split : few ? 8 : 4;
  const int64_t per_block = kWarps / p.k_split;
  p.blocks = (tiles + per_block - 1) / per_block;
  int u = o.loads_per_lane;
  if (u == 0) u = !few ? 4 : p.blocks <= int64_t(2) * MultiprocessorCount() ? 8 : 2;
  p.loads_per_lane = u <= 2 ? 2 : u <= 4 ? 4 : 8;
  p.interleave = o.k_order == 0 ? !few || k >= kGemvInterleaveMinK : o.k_order == 2;
  return p;
}

}  // namespace

GemvPlan PlanGemv(int rows, int n, int k, const GemvOptions& o) {
  if (rows >= 2 && !o.cuda_cores && !o.legacy) return PlanGemvMma(n, k, o);
  const int per_warp = GemvRowsPerWarp(rows);
  const int chunks = k / 8;
  auto blocks = [&](int s) {
    const int64_t rows_per_block = int64_t(per_warp) * (kWarps / s);
    return (int64_t(n) + rows_per_block - 1) / rows_per_block;
  };
  GemvPlan p;
  p.k_split = o.k_split;
  if (p.k_split == 0) {
    // Split k over more warps of a block until the grid has 3.5 (one row) or 2 (batches) blocks
    // per multiprocessor and, for batches, slices of at most kGemvMaxSliceChunks chunks; at
    // least 32 chunks (one per lane) a slice. Calibrated on the H200 sweep of `resa-bench
    // kernels --gemv --gemv-sweep` over the 1.5B and 7B layer shapes (one wave of small
    // matrices: splitting further adds blocks that wait for a second wave).
    const int sms = MultiprocessorCount();
    const int64_t want = rows == 1 ? int64_t(7) * sms / 2 : int64_t(2) * sms;
    const int64_t max_slice = rows == 1 ? int64_t(chunks) : kGemvMaxSliceChunks;
    p.k_split = 1;
    while (p.k_split < kWarps && (blocks(p.k_split) < want || chunks > max_slice * p.k_split) &&
           chunks / (p.k_split * 2) >= 32) {
      p.k_split *= 2;
    }
  }
  p.blocks = blocks(p.k_split);
  // Two loads per lane and row: at 32 registers a multiprocessor holds 64 warps, which kept more
  // bytes in flight on every measured shape than fewer warps with 4 or 8 loads each.
  const int u = o.loads_per_lane == 0 ? 2 : o.loads_per_lane;
  p.loads_per_lane = u <= 2 ? 2 : (u <= 4 || rows > 1) ? 4 : 8;
  return p;
}

absl::Status GemvBf16Cuda(const __nv_bfloat16* w, const __nv_bfloat16* x, int rows, int n, int k,
                          float* y, cudaStream_t stream, const GemvOptions& options) {
  return LaunchGemv(w, x, rows, n, k, y, stream, options);
}

namespace {

// The plan of a GEMV with a pair epilogue (kEpiSwiGlu, kEpiQkvRope): PlanGemv's. At one row
// (the CUDA-core kernel) at most 4 warps a row, so that a block holds whole pairs: k_split 8 is
// refused there and an automatic 8 becomes 4; batches run on the tensor cores, whose tiles hold
// whole pairs under any plan (options.cuda_cores is refused). The legacy kernel is refused.
absl::Status PairEpiloguePlan(const char* name, int rows, int n, int k, const GemvOptions& options,
                              GemvPlan& plan) {
  const bool split_ok = options.k_split == 0 || options.k_split == 1 || options.k_split == 2 ||
                        options.k_split == 4 || (options.k_split == 8 && rows > 1);
  if (options.legacy || (options.cuda_cores && rows > 1) || !split_ok ||
      options.loads_per_lane < 0 || options.loads_per_lane > 8 || options.k_order < 0 ||
      options.k_order > 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": bad options k_split ", options.k_split, " loads_per_lane ", options.loads_per_lane,
        " k_order ", options.k_order, " legacy ", options.legacy, " cuda_cores ",
        options.cuda_cores,
        " (one row: k_split <= 4, so that a block holds whole pairs of output rows; batches: "
        "the tensor-core kernel)"));
  }
  if (rows > 1) {
    plan = PlanGemv(rows, n, k, options);  // the tensor-core kernel: pairs share a tile
    return absl::OkStatus();
  }
  plan = PlanGemv(1, n, k, options);
  if (plan.k_split > 4) {  // one output row a block: pairs would straddle blocks
    GemvOptions o = options;
    o.k_split = 4;
    plan = PlanGemv(1, n, k, o);
  }
  return absl::OkStatus();
}

// A one-row launch of a RowNorm consumer: the dynamic shared memory its block sums are staged
// in (the tensor-core kernel stages none).
cudaLaunchConfig_t WithRowNormStaging(cudaLaunchConfig_t cfg, const RowNorm& norm) {
  cfg.dynamicSmemBytes = norm.squares != nullptr ? size_t(norm.count) * sizeof(float) : 0;
  return cfg;
}

absl::Status CheckRowNorm(const char* name, const RowNorm& norm, int rows) {
  if (norm.squares != nullptr &&
      (norm.dim <= 0 || !(norm.eps >= 0.0f) || norm.count < 1 ||
       int64_t(rows) * norm.count > kRowNormMaxSquares)) {
    return absl::InvalidArgumentError(absl::StrCat(
        name,
        ": a RowNorm input takes dim > 0, eps >= 0 and at least one block sum a row, at "
        "most ",
        kRowNormMaxSquares, " over its rows, got rows ", rows, " dim ", norm.dim, " eps ", norm.eps,
        " count ", norm.count));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status GemvSwiGluBf16Cuda(const __nv_bfloat16* w, const __nv_bfloat16* x, int rows, int inter,
                                int k, __nv_bfloat16* act, cudaStream_t stream,
                                const GemvOptions& options, const RowNorm& norm) {
  if (auto st = CheckRowNorm("GemvSwiGluBf16Cuda", norm, rows); !st.ok()) return st;
  if (rows < 1 || rows > kGemvMaxRows || inter <= 0 || k <= 0 || k % 8 != 0 || act == nullptr ||
      (reinterpret_cast<uintptr_t>(w) | reinterpret_cast<uintptr_t>(x)) % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("GemvSwiGluBf16Cuda: bad shape rows ", rows,
                                                   " inter ", inter, " k ", k, " (rows 1..",
                                                   kGemvMaxRows, ", k % 8 == 0, 16-byte aligned)"));
  }
  GemvPlan plan;
  if (auto st = PairEpiloguePlan("GemvSwiGluBf16Cuda", rows, 2 * inter, k, options, plan);
      !st.ok()) {
    return st;
  }
  const GemvLaunch launch(plan, options, stream);
  const cudaError_t err =
      plan.tensor_cores
          ? LaunchGemvMmaKernel<__nv_bfloat16, kEpiSwiGlu>(plan, launch.cfg, w, x, rows,
                                                           2 * inter, k, nullptr, act,
                                                           QkvRopeParams{}, GemvNormArgs{norm})
          : LaunchGemvKernel<1, __nv_bfloat16, kEpiSwiGlu>(
                plan.loads_per_lane, WithRowNormStaging(launch.cfg, norm), w, x, 2 * inter, k,
                plan.k_split, nullptr, act, QkvRopeParams{}, GemvNormArgs{norm});
  return CudaStatus(err, "launching the GEMV (SwiGLU epilogue)");
}

absl::Status GemvQkvRopeBf16Cuda(const __nv_bfloat16* w, const __nv_bfloat16* x, int k,
                                 const QkvRopeParams& p, cudaStream_t stream,
                                 const GemvOptions& options, const RowNorm& norm) {
  if (auto st = CheckRowNorm("GemvQkvRopeBf16Cuda", norm, p.rows); !st.ok()) return st;
  if (p.rows < 1 || p.rows > kGemvMaxRows || p.num_heads <= 0 || p.num_kv_heads <= 0 ||
      p.head_dim <= 0 || p.head_dim % 2 != 0 || p.head_dim > 1024 || k <= 0 || k % 8 != 0 ||
      p.positions == nullptr || p.q == nullptr || p.k == nullptr || p.v == nullptr ||
      (reinterpret_cast<uintptr_t>(w) | reinterpret_cast<uintptr_t>(x)) % 16 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("GemvQkvRopeBf16Cuda: bad shape rows ", p.rows, " heads ", p.num_heads, "/",
                     p.num_kv_heads, " d ", p.head_dim, " k ", k, " (rows 1..", kGemvMaxRows,
                     ", even d, k % 8 == 0, 16-byte aligned, positions and q/k/v set)"));
  }
  if (p.kv.k != nullptr && p.rows > 1 && p.page_table_stride <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("GemvQkvRopeBf16Cuda: the cache append of ", p.rows,
                     " rows needs page_table_stride > 0, got ", p.page_table_stride));
  }
  if (p.kv.k != nullptr && (p.kv.v == nullptr || p.kv.summary == nullptr ||
                            p.page_table == nullptr || p.num_keys == nullptr ||
                            p.kv.num_kv_heads != p.num_kv_heads || p.kv.head_dim != p.head_dim)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GemvQkvRopeBf16Cuda: the cache append needs kv.v, kv.summary, page_table and num_keys, "
        "and the cache's ",
        p.kv.num_kv_heads, " KV heads of dim ", p.kv.head_dim, " to match ", p.num_kv_heads,
        " of dim ", p.head_dim));
  }
  const int n = (p.num_heads + 2 * p.num_kv_heads) * p.head_dim;
  GemvPlan plan;
  if (auto st = PairEpiloguePlan("GemvQkvRopeBf16Cuda", p.rows, n, k, options, plan); !st.ok()) {
    return st;
  }
  const GemvLaunch launch(plan, options, stream);
  const cudaError_t err =
      plan.tensor_cores
          ? LaunchGemvMmaKernel<__nv_bfloat16, kEpiQkvRope>(plan, launch.cfg, w, x, p.rows, n, k,
                                                            nullptr, nullptr, p, GemvNormArgs{norm})
          : LaunchGemvKernel<1, __nv_bfloat16, kEpiQkvRope>(
                plan.loads_per_lane, WithRowNormStaging(launch.cfg, norm), w, x, n, k,
                plan.k_split, nullptr, nullptr, p, GemvNormArgs{norm});
  return CudaStatus(err, "launching the GEMV (QKV epilogue)");
}

absl::Status GemvBf16Cuda(const __nv_bfloat16* w, const float* x, int rows, int n, int k, float* y,
                          cudaStream_t stream, const GemvOptions& options) {
  return LaunchGemv(w, x, rows, n, k, y, stream, options);
}

namespace {

template <typename XT>
absl::Status LaunchGemvResidual(const __nv_bfloat16* w, const XT* x, int rows, int n, int k,
                                float* h, const float* next_w, __nv_bfloat16* g, float* squares,
                                cudaStream_t stream, const GemvOptions& options) {
  if (rows < 1 || rows > kGemvMaxRows || n <= 0 || k <= 0 || k % 8 != 0 || h == nullptr ||
      next_w == nullptr || g == nullptr || squares == nullptr ||
      (reinterpret_cast<uintptr_t>(w) | reinterpret_cast<uintptr_t>(x)) % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GemvResidualBf16Cuda: bad shape rows ", rows, " n ", n, " k ", k, " (rows 1..",
        kGemvMaxRows, ", k % 8 == 0, 16-byte aligned w and x, h, next_w, g and squares set)"));
  }
  const bool split_ok = options.k_split == 0 || options.k_split == 1 || options.k_split == 2 ||
                        options.k_split == 4 || options.k_split == 8;
  if (options.legacy || (options.cuda_cores && rows > 1) || !split_ok ||
      options.loads_per_lane < 0 || options.loads_per_lane > 8 || options.k_order < 0 ||
      options.k_order > 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GemvResidualBf16Cuda: bad options k_split ", options.k_split, " loads_per_lane ",
        options.loads_per_lane, " k_order ", options.k_order, " legacy ", options.legacy,
        " cuda_cores ", options.cuda_cores, " (batches: the tensor-core kernel)"));
  }
  const GemvPlan plan = PlanGemv(rows, n, k, options);
  const GemvLaunch launch(plan, options, stream);
  GemvNormArgs nf;
  nf.next_w = next_w;
  nf.g = g;
  nf.squares = squares;
  const cudaError_t err =
      plan.tensor_cores
          ? LaunchGemvMmaKernel<XT, kEpiResidual>(plan, launch.cfg, w, x, rows, n, k, h, nullptr,
                                                  QkvRopeParams{}, nf)
          : LaunchGemvKernel<1, XT, kEpiResidual>(plan.loads_per_lane, launch.cfg, w, x, n, k,
                                                  plan.k_split, h, nullptr, QkvRopeParams{}, nf);
  return CudaStatus(err, "launching the GEMV (residual epilogue)");
}

}  // namespace

int GemvResidualSquares(int rows, int n, int k, const GemvOptions& options) {
  return int(PlanGemv(rows, n, k, options).blocks);
}

absl::Status GemvResidualBf16Cuda(const __nv_bfloat16* w, const __nv_bfloat16* x, int rows, int n,
                                  int k, float* h, const float* next_w, __nv_bfloat16* g,
                                  float* squares, cudaStream_t stream,
                                  const GemvOptions& options) {
  return LaunchGemvResidual(w, x, rows, n, k, h, next_w, g, squares, stream, options);
}

absl::Status GemvResidualBf16Cuda(const __nv_bfloat16* w, const float* x, int rows, int n, int k,
                                  float* h, const float* next_w, __nv_bfloat16* g, float* squares,
                                  cudaStream_t stream, const GemvOptions& options) {
  return LaunchGemvResidual(w, x, rows, n, k, h, next_w, g, squares, stream, options);
}

absl::Status GemvBf16Cuda(const __nv_bfloat16* w, const __nv_bfloat16* x, int rows, int n, int k,
                          float* y, cudaStream_t stream) {
  return LaunchGemv(w, x, rows, n, k, y, stream, GemvOptions{});
}

absl::Status GemvArgMaxBf16Cuda(const __nv_bfloat16* w, const __nv_bfloat16* x, int n, int k,
                                float* y, uint64_t* argmax, cudaStream_t stream,
                                const GemvOptions& options) {
  if (n <= 0 || k <= 0 || k % 8 != 0 || y == nullptr || argmax == nullptr ||
      (reinterpret_cast<uintptr_t>(w) | reinterpret_cast<uintptr_t>(x)) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(argmax) % 8 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GemvArgMaxBf16Cuda: bad shape n ", n, " k ", k,
        " (k % 8 == 0, 16-byte aligned w and x, y set, argmax set and 8-byte aligned)"));
  }
  const bool split_ok = options.k_split == 0 || options.k_split == 1 || options.k_split == 2 ||
                        options.k_split == 4 || options.k_split == 8;
  if (options.legacy || !split_ok || options.loads_per_lane < 0 || options.loads_per_lane > 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("GemvArgMaxBf16Cuda: bad options k_split ", options.k_split,
                     " loads_per_lane ", options.loads_per_lane, " legacy ", options.legacy));
  }
  const GemvPlan plan = PlanGemv(1, n, k, options);  // the one-row CUDA-core kernel
  const GemvLaunch launch(plan, options, stream);
  GemvNormArgs nf;
  nf.argmax = reinterpret_cast<unsigned long long*>(argmax);
  const cudaError_t err = LaunchGemvKernel<1, __nv_bfloat16, kEpiArgMax>(
      plan.loads_per_lane, launch.cfg, w, x, n, k, plan.k_split, y, nullptr, QkvRopeParams{}, nf);
  return CudaStatus(err, "launching the GEMV (arg-max epilogue)");
}

absl::Status GemvBf16Cuda(const __nv_bfloat16* w, const float* x, int rows, int n, int k, float* y,
                          cudaStream_t stream) {
  return LaunchGemv(w, x, rows, n, k, y, stream, GemvOptions{});
}

}  // namespace resa::cuda
