// The decode GEMV of the CUDA backend (GemvBf16Cuda and its fused SwiGLU / QKV epilogues,
// model_ops_cuda.h): one input row on the CUDA cores (GemvKernel), batches of 2-8 rows on the
// tensor cores (GemvMmaKernel), the previous kernel as the benchmark's baseline
// (LegacyGemvKernel), and their launch plans.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch.h"
#include "runtime/engine/cuda/model_ops_common.cuh"
#include "runtime/engine/cuda/model_ops_cuda.h"

namespace resa::cuda {
namespace {

using detail::CpAsyncCommit;
using detail::GridDependencyWait;
using detail::LaunchDependents;
using detail::Mma16816;
using ops_internal::kThreads;
using ops_internal::KvPage;
using ops_internal::KvSlotOffset;
using ops_internal::PairBias;
using ops_internal::QkvRopePairAt;
using ops_internal::RopeCosSin;
using ops_internal::WarpSum;

// The eight bf16 values packed in v, as fp32.
__device__ __forceinline__ void Bf16x8ToFloat(const uint4& v, float (&out)[8]) {
  const __nv_bfloat162* p = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    const float2 f = __bfloat1622float2(p[t]);
    out[2 * t] = f.x;
    out[2 * t + 1] = f.y;
  }
}

// Eight consecutive x values from element `offset`, as fp32; zeros when !pred. Read-only path
// through volatile asm, so the loads stay after GridDependencyWait (an __ldg, an invariant load
// to the compiler, may be hoisted above it).
__device__ __forceinline__ void LoadX8(const __nv_bfloat16* x, size_t offset, bool pred,
                                       float (&out)[8]) {
  uint4 xv;
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %5, 0;\n"
      " mov.b32 %0, 0;\n mov.b32 %1, 0;\n mov.b32 %2, 0;\n mov.b32 %3, 0;\n"
      " @p ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];\n}\n"
      : "=r"(xv.x), "=r"(xv.y), "=r"(xv.z), "=r"(xv.w)
      : "l"(x + offset), "r"(int(pred)));
  Bf16x8ToFloat(xv, out);
}
__device__ __forceinline__ void LoadX8(const float* x, size_t offset, bool pred, float (&out)[8]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, %5, 0;\n"
        " mov.b32 %0, 0;\n mov.b32 %1, 0;\n mov.b32 %2, 0;\n mov.b32 %3, 0;\n"
        " @p ld.global.nc.v4.f32 {%0,%1,%2,%3}, [%4];\n}\n"
        : "=f"(out[4 * h]), "=f"(out[4 * h + 1]), "=f"(out[4 * h + 2]), "=f"(out[4 * h + 3])
        : "l"(x + offset + 4 * h), "r"(int(pred)));
  }
}
// The legacy kernel's x loads (__ldg), kept as they were for the A/B.
__device__ __forceinline__ void LegacyLoadX8(const __nv_bfloat16* x, size_t offset,
                                             float (&out)[8]) {
  const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + offset));
  Bf16x8ToFloat(xv, out);
}
__device__ __forceinline__ void LegacyLoadX8(const float* x, size_t offset, float (&out)[8]) {
  const float4 a = __ldg(reinterpret_cast<const float4*>(x + offset));
  const float4 b = __ldg(reinterpret_cast<const float4*>(x + offset) + 1);
  out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
  out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
}

// One 16-byte weight load, streamed (read once: no L1 allocation); zeros when !pred.
__device__ __forceinline__ uint4 LoadW(const uint4* p, bool pred) {
  uint4 v;
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %5, 0;\n"
      " mov.b32 %0, 0;\n mov.b32 %1, 0;\n mov.b32 %2, 0;\n mov.b32 %3, 0;\n"
      " @p ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n}\n"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p), "r"(int(pred)));
  return v;
}

// Output rows per warp: one for a single input row; two for batches, so each x load serves two
// weight rows without the register pressure of more (143 registers at 8 x 4 left one block per
// SM and ran slower).
__host__ __device__ constexpr int GemvRowsPerWarp(int m) { return m == 1 ? 1 : 2; }
constexpr int kWarps = kThreads / 32;

// The GEMV epilogue: output row j of group gg is the sum of its `split` warps' partials, added
// in slice order (the result does not depend on timing); rows past n are dropped.
template <int M, int R>
__device__ __forceinline__ void StoreRowSums(const float (&part)[kWarps][M][R], int groups,
                                             int split, int n, float* y) {
  for (int i = threadIdx.x; i < groups * M * R; i += blockDim.x) {
    const int gg = i / (M * R), m = (i / R) % M, r = i % R;
    const int j = (blockIdx.x * groups + gg) * R + r;
    if (j >= n) continue;
    float sum = 0.0f;
    for (int s = 0; s < split; ++s) sum += part[gg * split + s][m][r];
    y[size_t(m) * n + j] = sum;
  }
}

// A warp's place in a GEMV block (layout: GemvKernel): its group of `split` warps and the
// slice [c0, c1) of the k / 8 16-byte chunks that it walks.
struct GemvWarp {
  int warp, lane, groups, c0, c1;
};

// What a GEMV block does with its rows' sums: store y, or one of the fused epilogues, whose
// output rows are logical: pairs (2i, 2i + 1) of weight rows meet in one block (GemvKernel).
enum GemvEpilogue : int { kEpiStore, kEpiSwiGlu, kEpiQkvRope, kEpiResidual };

// The RMSNorm of a one-row step inside its GEMVs (GemvResidualBf16Cuda, RowNorm): a producer
// (kEpiResidual: o_proj, down) adds its sums into the residual h, writes g = bf16(h * next_w)
// and its block's sum of h^2; a consumer (kEpiSwiGlu, kEpiQkvRope with norm.squares set:
// gate_up, qkv) reads g as its x and scales its sums by RowRmsInv(norm) before its epilogue.
// Neither holds a register more across its weight loop than the plain GEMV (that costs warps a
// multiprocessor at 32 registers): what they read besides x goes to shared memory by cp.async,
// issued before the loop, read after it.
struct GemvNormArgs {
  RowNorm norm;
  const float* next_w = nullptr;
  __nv_bfloat16* g = nullptr;
  float* squares = nullptr;
};

// 4-byte cp.async (L1-allocating: the values are reused by no one, but .cg takes 16 bytes only).
__device__ __forceinline__ void CpAsync4(void* smem, const float* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(
                   static_cast<uint32_t>(__cvta_generic_to_shared(smem))),
               "l"(src));
}

// A consumer's share of sum(h^2) (RowNorm): thread t adds the producer's block sums t + kThreads
// i (staged in shared memory by its own cp.async) in i order, then the warp's sum (WarpSum gives
// every lane the same bits) goes to slot[warp]; RowRmsInv adds the kWarps slots in order.
// Every block of the grid gets the same bits.
__device__ __forceinline__ void RowSquaresShare(const RowNorm& nm, const float* staged, int warp,
                                                int lane, float* slot) {
  asm volatile("cp.async.wait_all;\n" ::: "memory");
  float ss = 0.0f;
  for (int i = threadIdx.x; i < nm.count; i += kThreads) ss += staged[i];
  ss = WarpSum(ss);
  if (lane == 0) slot[warp] = ss;
}
__device__ __forceinline__ float RowRmsInv(const RowNorm& nm, const float* slot) {
  float ss = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) ss += slot[w];
  return rsqrtf(ss / float(nm.dim) + nm.eps);
}

// The weight row of logical output row j of an n-row GEMV: with kEpiSwiGlu, gate row j / 2 for
// even j and up row n / 2 + j / 2 for odd j; with kEpiQkvRope (head_dim d, half = d / 2), the
// RoPE pair (i, i + half) of a head for (2 (head * half + i), + 1).
template <int EPI>
__device__ __forceinline__ int GemvWeightRow(int j, int n, int half) {
  if constexpr (EPI == kEpiSwiGlu) return (j & 1) ? (n >> 1) + (j >> 1) : (j >> 1);
  if constexpr (EPI == kEpiQkvRope) {
    const int pair = j >> 1;
    return (pair / half) * 2 * half + pair % half + ((j & 1) ? half : 0);
  }
  return j;
}

// What the QKV epilogue of logical pair `pair` of input row r needs besides the sums: its
// rotation (RopeCosSin; v heads and pairs past the matrix keep cos 1, sin 0, which their
// epilogue ignores), its bias (PairBias) and, with the cache append, the row's page for k and v
// heads (KvPage; else -1); for k heads the page's 16 slot rows at the pair's two dims (the key
// append's summary reads them) are prefetched into L1. The GEMVs compute it for their first epilogue item before
// GridDependencyWait: the fp64 pow and sincos and the loads then overlap the weight loads and
// the previous kernel instead of following the reduction. Positions and page tables come from
// the host (the step's metadata), the bias is a weight, and the page's other keys were written
// by earlier steps: none by the kernel just before.
struct PairPrologue {
  float cs = 1.0f, sn = 0.0f;
  float2 bias = {0.0f, 0.0f};
  int32_t page = -1;
};
__device__ __forceinline__ PairPrologue QkvPairPrologue(const QkvRopeParams& rope, int r, int pair,
                                                        int pairs) {
  PairPrologue pp;
  if (pair >= pairs) return pp;
  const int half = rope.head_dim / 2, head = pair / half, i = pair % half;
  pp.bias = PairBias(rope, head, i);
  const bool rotated = head < rope.num_heads + rope.num_kv_heads;
  if (head >= rope.num_heads && rope.kv.k != nullptr) pp.page = KvPage(rope, r);
  if (rotated) RopeCosSin(rope, r, i, pp.cs, pp.sn);
  if (pp.page >= 0 && rotated) {  // a k head
    const int32_t pos = rope.positions[r];
    const __nv_bfloat16* base =
        rope.kv.k + KvSlotOffset(rope, head - rope.num_heads, pp.page, pos - pos % kPageTokens);
#pragma unroll
    for (int t = 0; t < kPageTokens; ++t) {
      asm volatile("prefetch.global.L1 [%0];" ::"l"(base + t * rope.head_dim + i));
      asm volatile("prefetch.global.L1 [%0];" ::"l"(base + t * rope.head_dim + i + half));
    }
  }
  return pp;
}

// The GEMV prologue: this warp's GemvWarp, the weight rows of its group's R output rows in wr
// (rows past n read row n - 1: computed and dropped; logical rows per GemvWeightRow) and zeroed
// accumulators.
template <int M, int R, int EPI = kEpiStore>
__device__ __forceinline__ GemvWarp GemvPrologue(const __nv_bfloat16* w, int n, int k, int split,
                                                 int half, const uint4* (&wr)[R],
                                                 float (&acc)[M][R]) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int groups = kWarps / split;
  const int g = warp / split, slice = warp % split;
  const int j0 = (blockIdx.x * groups + g) * R;
  const int chunks = k / 8;
  const int c0 = int(int64_t(slice) * chunks / split),
            c1 = int(int64_t(slice + 1) * chunks / split);
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int j = j0 + r < n ? j0 + r : n - 1;
    const int row = GemvWeightRow<EPI>(j, n, half);
    wr[r] = reinterpret_cast<const uint4*>(w + size_t(row) * k);
  }
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int r = 0; r < R; ++r) acc[m][r] = 0.0f;
  }
  return {warp, lane, groups, c0, c1};
}

// One chunk of one input row: acc[r] += wf[r] . xf, the 8 products added in element order.
template <int R>
__device__ __forceinline__ void FmaChunk(const float (&wf)[R][8], const float (&xf)[8],
                                         float (&acc)[R]) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int t = 0; t < 8; ++t) acc[r] = fmaf(wf[r][t], xf[t], acc[r]);
  }
}

// The end of a warp's walk: lane 0 stores the warp sums of acc in the warp's slot of part.
template <int M, int R>
__device__ __forceinline__ void StoreWarpSums(const float (&acc)[M][R], int lane,
                                              float (&part)[M][R]) {
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float v = WarpSum(acc[m][r]);
      if (lane == 0) part[m][r] = v;
    }
  }
}

// Block = 8 warps = (8 / split) groups of `split` warps; group g owns output rows
// [(blockIdx.x * groups + g) * R, + R), and its warps split the k / 8 16-byte chunks of those
// rows into `split` contiguous slices. A lane reads chunks c0 + lane + 32 u of its slice in
// batches of U chunks x R rows: all U * R weight loads of a batch are issued (predicated, no
// branch: a short last batch costs no round trip of its own) before the first is used. The
// first batch is issued before GridDependencyWait: with programmatic dependent launch it
// overlaps the previous kernel (weights are constant; x and y are touched only after the wait).
// Each x load (L1/L2 resident) serves all R rows. Partial sums meet in shared memory and are
// added in slice order: the result does not depend on timing.
// Fused epilogues (one input row): the n output rows are logical pairs (GemvWeightRow) that
// meet in one block (the host keeps groups * R even) and the block writes, instead of y,
//  * kEpiSwiGlu (gate_up): gate row i at 2i, up row i at 2i + 1; act[m][i] = bf16(silu(gate) *
//    up), as SiluMulCuda does from y;
//  * kEpiQkvRope (qkv): the RoPE pairs of every head; bf16 q, k, v with bias and RoPE at
//    positions[0], as QkvRopeCuda does from y (QkvRopePairAt; rotation, bias and cache page
//    from QkvPairPrologue, before the wait).
// The one-row QKV twin's fp64 RoPE code would take 62-80 registers, 4 blocks a multiprocessor:
// the 7B qkv (576 blocks) then needs a second wave. It is held to kQkvRopeMinBlocks (48
// registers; a few bytes spill at 2 loads a lane): H200, 7B one-row twin 13.80 -> 10.71 us,
// 1.5B 5.04 -> 5.08 (6 blocks: 10.76 / 5.15; e2e 1.5B batch-1 dense 1-2% slower).
constexpr int kQkvRopeMinBlocks = 5;
// The SwiGLU and residual one-row kernels at 2 loads a lane (the plans' default) stay at 32
// registers, 8 blocks a multiprocessor, as the plain one: their RowNorm code would take 36-44.
template <int M, int EPI, int U>
constexpr int GemvMinBlocks() {
  if (M != 1) return 1;
  if (EPI == kEpiQkvRope) return kQkvRopeMinBlocks;
  return U == 2 && EPI != kEpiStore ? 8 : 1;
}
// NORM: a RowNorm consumer (its own instantiation, so that the plain epilogue kernels keep
// their code and registers).
template <int M, int R, int U, typename XT, int EPI = kEpiStore, bool NORM = false>
__global__ void __launch_bounds__(kThreads, (GemvMinBlocks<M, EPI, U>()))
    GemvKernel(const __nv_bfloat16* w, const XT* x, int n, int k, int split, float* y,
               __nv_bfloat16* act, const QkvRopeParams rope, const GemvNormArgs nf) {
  static_assert(EPI != kEpiResidual || M == 1, "the residual epilogue takes one input row");
  static_assert(!NORM || ((EPI == kEpiSwiGlu || EPI == kEpiQkvRope) && M == 1),
                "RowNorm inputs: the one-row SwiGLU and QKV kernels");
  __shared__ float part[kWarps][M][R];
  __shared__ float squares[kWarps];
  // A RowNorm consumer stages the producer's norm.count block sums of h^2 in dynamic shared
  // memory (none for the plain launches); a producer (kEpiResidual) the residual and next norm
  // weight of its output rows.
  extern __shared__ float dynamic_staged[];
  __shared__ float residual_staged[EPI == kEpiResidual ? 2 * kWarps : 1];
  float* staged = NORM ? dynamic_staged : residual_staged;
  const uint4* wr[R];
  float acc[M][R];
  const auto [warp, lane, groups, c0, c1] =
      GemvPrologue<M, R, EPI>(w, n, k, split, rope.head_dim / 2, wr, acc);
  uint4 wv[U][R];
  int c = c0 + lane;
#pragma unroll
  for (int u = 0; u < U; ++u) {
#pragma unroll
    for (int r = 0; r < R; ++r) wv[u][r] = LoadW(wr[r] + (c + 32 * u), c + 32 * u < c1);
  }
  // The QKV epilogue's prologue (rotation, bias, cache page) for this thread's pair (at most
  // kWarps * R / 2 pairs a block: one a thread at most).
  PairPrologue pro;
  if constexpr (EPI == kEpiQkvRope) {
    if (int(threadIdx.x) < groups * R / 2) {
      pro = QkvPairPrologue(rope, 0, ((blockIdx.x * groups * R) >> 1) + int(threadIdx.x), n >> 1);
    }
  }
  // The residual epilogue's output row j (thread j - first row, in warp 0): its next norm
  // weight, constant, staged before the wait, its residual after it.
  if constexpr (EPI == kEpiResidual) {
    const int j = blockIdx.x * groups * R + int(threadIdx.x);
    if (int(threadIdx.x) < groups * R && j < n)
      CpAsync4(&staged[kWarps + threadIdx.x], nf.next_w + j);
  }
  GridDependencyWait();
  // An appending QKV GEMV lets the next kernel (the decode attention, which reads its q, k and
  // v) launch only as it exits: launched early, its thread-block clusters found the SMs held by
  // this grid's blocks (GemvQkvRopeBf16Cuda).
  if (EPI != kEpiQkvRope || rope.kv.k == nullptr) LaunchDependents();
  if constexpr (EPI == kEpiResidual) {
    const int j = blockIdx.x * groups * R + int(threadIdx.x);
    if (int(threadIdx.x) < groups * R && j < n) CpAsync4(&staged[threadIdx.x], y + j);
    CpAsyncCommit();
  }
  if constexpr (NORM) {
    for (int i = threadIdx.x; i < nf.norm.count; i += kThreads) {
      CpAsync4(&staged[i], nf.norm.squares + i);
    }
    CpAsyncCommit();
  }
  for (;;) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int cu = c + 32 * u;
      const bool live = cu < c1;  // dead chunks: zero weights and zero x, no branch
      float wf[R][8];
#pragma unroll
      for (int r = 0; r < R; ++r) Bf16x8ToFloat(wv[u][r], wf[r]);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float xf[8];
        LoadX8(x, size_t(m) * k + size_t(cu) * 8, live, xf);
        FmaChunk<R>(wf, xf, acc[m]);
      }
    }
    c += 32 * U;
    if (c >= c1) break;
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int r = 0; r < R; ++r) wv[u][r] = LoadW(wr[r] + (c + 32 * u), c + 32 * u < c1);
    }
  }
  StoreWarpSums<M, R>(acc, lane, part[warp]);
  if constexpr (NORM) RowSquaresShare(nf.norm, staged, warp, lane, squares);
  __syncthreads();
  if constexpr (EPI == kEpiResidual) {
    // h += the row sum (as AddRmsNormCuda adds the GEMV's y), g = bf16(h * next_w); lane 0 adds
    // the rows' h^2 in row order into the block's sum.
    if (warp == 0) {
      const int rows = groups * R, j = blockIdx.x * rows + lane;
      float sq = 0.0f;
      if (lane < rows && j < n) {
        asm volatile("cp.async.wait_all;\n" ::: "memory");
        float sum = 0.0f;
        for (int s = 0; s < split; ++s) sum += part[lane * split + s][0][0];
        const float hn = staged[lane] + sum;
        y[j] = hn;
        nf.g[j] = __float2bfloat16(hn * staged[kWarps + lane]);
        sq = hn * hn;
      }
      float block_sum = 0.0f;
      for (int l = 0; l < rows; ++l) block_sum += __shfl_sync(0xffffffffu, sq, l);
      if (lane == 0) nf.squares[blockIdx.x] = block_sum;
    }
  } else if constexpr (EPI == kEpiSwiGlu) {
    const float inv = NORM ? RowRmsInv(nf.norm, squares) : 1.0f;
    for (int i = threadIdx.x; i < groups * R / 2 * M; i += blockDim.x) {
      const int l = 2 * (i / M), m = i % M;  // the pair's gate row within the block
      const int j = blockIdx.x * groups * R + l;
      if (j >= n) continue;
      float g = 0.0f, u = 0.0f;
      for (int s = 0; s < split; ++s) g += part[(l / R) * split + s][m][l % R];
      for (int s = 0; s < split; ++s) u += part[((l + 1) / R) * split + s][m][(l + 1) % R];
      if constexpr (NORM) g *= inv, u *= inv;
      act[size_t(m) * (n >> 1) + (j >> 1)] = __float2bfloat16(g / (1.0f + expf(-g)) * u);
    }
  } else if constexpr (EPI == kEpiQkvRope) {
    static_assert(M == 1, "the QKV epilogue takes one input row");
    static_assert(kWarps * R / 2 <= kThreads, "one pair a thread at most");
    const int half = rope.head_dim / 2;
    const int i = threadIdx.x;
    const int l = 2 * i;  // the pair's first row within the block
    const int j = blockIdx.x * groups * R + l;
    if (i < groups * R / 2 && j < n) {
      float a = 0.0f, b = 0.0f;
      for (int s = 0; s < split; ++s) a += part[(l / R) * split + s][0][l % R];
      for (int s = 0; s < split; ++s) b += part[((l + 1) / R) * split + s][0][(l + 1) % R];
      if constexpr (NORM) {
        const float inv = RowRmsInv(nf.norm, squares);
        a *= inv, b *= inv;
      }
      const int pair = j >> 1;
      QkvRopePairAt(rope, 0, pair / half, pair % half, a, b, pro.cs, pro.sn, pro.bias, pro.page);
    }
  } else {
    StoreRowSums<M, R>(part, groups, split, n, y);
  }
}

// The previous GEMV (GemvOptions::legacy, the benchmark's A/B baseline): the same block layout,
// but a lane walks its slice through a loop unrolled 4 (R = 1) or 2 times, so slices of fewer
// chunks than that per lane run their loads one round trip at a time.
template <int M, typename XT>
__global__ void __launch_bounds__(kThreads)
    LegacyGemvKernel(const __nv_bfloat16* w, const XT* x, int n, int k, int split, float* y) {
  constexpr int R = GemvRowsPerWarp(M);
  __shared__ float part[kWarps][M][R];
  const uint4* wr[R];
  float acc[M][R];
  const auto [warp, lane, groups, c0, c1] = GemvPrologue<M, R>(w, n, k, split, 0, wr, acc);
#pragma unroll(R == 1 ? 4 : 2)
  for (int c = c0 + lane; c < c1; c += 32) {
    float wf[R][8];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      uint4 wv;
      asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                   : "=r"(wv.x), "=r"(wv.y), "=r"(wv.z), "=r"(wv.w)
                   : "l"(wr[r] + c));
      Bf16x8ToFloat(wv, wf[r]);
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float xf[8];
      LegacyLoadX8(x, size_t(m) * k + size_t(c) * 8, xf);
      FmaChunk<R>(wf, xf, acc[m]);
    }
  }
  StoreWarpSums<M, R>(acc, lane, part[warp]);
  __syncthreads();
  StoreRowSums<M, R>(part, groups, split, n, y);
}

// ---- Tensor-core GEMV for batches (2..8 input rows) ----
//
// y^T = W x^T on mma.m16n8k16: A = 16 weight rows x 16 k, B = 16 k x 8 input rows (rows past
// `rows` are zero), C = 16 x 8 fp32. A warp owns a tile of 16 weight rows; the reduction index
// is permuted so that every fragment is one 16-byte load straight from global memory: in a
// 32-wide k step, lane (g, t) (g = lane / 4, t = lane % 4) loads elements [8t, 8t + 8) of
// weight rows g and g + 8 and of input row g. Its first MMA takes elements 8t + 0..3 as the
// fragment columns (2t, 2t + 1, 2t + 8, 2t + 9), the second 8t + 4..7; A and B use the same
// permutation, so the sums are those of the plain product. Every weight byte is read once and
// feeds all input rows on the tensor pipe, where the CUDA-core kernel spends 8 FMAs (plus
// conversions) on each weight at 8 rows and runs issue-bound.
constexpr int kMmaTileRows = 16;

// The weight row behind row r (0..15) of 16-row tile `tile` of an n-row GEMV: kEpiStore row
// 16 tile + r; the pair epilogues put the first rows of pairs 8 tile .. 8 tile + 7 in rows
// 0..7 and their second rows in 8..15, so a lane's accumulators c0 and c2 are one pair:
// kEpiSwiGlu gate row p and up row n / 2 + p; kEpiQkvRope the RoPE pair (i, i + half) of a
// head. Rows past the end read the last valid row (computed, dropped).
template <int EPI>
__device__ __forceinline__ int MmaTileWeightRow(int tile, int r, int n, int half) {
  if constexpr (EPI == kEpiStore) {
    const int j = tile * kMmaTileRows + r;
    return j < n ? j : n - 1;
  } else {
    const int pairs = n >> 1;
    const int p = min(tile * (kMmaTileRows / 2) + (r & 7), pairs - 1);
    if constexpr (EPI == kEpiSwiGlu) return r < 8 ? p : pairs + p;
    return (p / half) * 2 * half + p % half + (r < 8 ? 0 : half);
  }
}

// The B fragments of one k step for this lane: 8 consecutive x values of input row g as bf16
// pairs; zeros when !pred. fp32 x is split as x = hi + lo (both bf16, |x - hi - lo| <= 2^-17
// |x|), and the step runs both halves through the MMA: the product keeps x to about fp32's
// first 17 bits instead of bf16's 8.
struct XFrag {
  uint32_t hi[4];
};
struct XFragSplit {
  uint32_t hi[4], lo[4];
};
__device__ __forceinline__ void LoadXFrag(const __nv_bfloat16* x, size_t offset, bool pred,
                                          XFrag& f) {
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %5, 0;\n"
      " mov.b32 %0, 0;\n mov.b32 %1, 0;\n mov.b32 %2, 0;\n mov.b32 %3, 0;\n"
      " @p ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];\n}\n"
      : "=r"(f.hi[0]), "=r"(f.hi[1]), "=r"(f.hi[2]), "=r"(f.hi[3])
      : "l"(x + offset), "r"(int(pred)));
}
__device__ __forceinline__ uint32_t PackBf16(float a, float b) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<const uint32_t*>(&v);
}
__device__ __forceinline__ void LoadXFrag(const float* x, size_t offset, bool pred, XFragSplit& f) {
  float v[8];
  LoadX8(x, offset, pred, v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
    f.hi[i] = *reinterpret_cast<const uint32_t*>(&h);
    const float2 hf = __bfloat1622float2(h);
    f.lo[i] = PackBf16(v[2 * i] - hf.x, v[2 * i + 1] - hf.y);
  }
}
template <typename XT>
using XFragOf = std::conditional_t<std::is_same_v<XT, float>, XFragSplit, XFrag>;

// One k step: weight fragments a (row g) and b (row g + 8), 16 bytes each.
__device__ __forceinline__ void MmaStep(float (&acc0)[4], float (&acc1)[4], const uint4& a,
                                        const uint4& b, const uint32_t (&x)[4]) {
  Mma16816(acc0, a.x, b.x, a.y, b.y, x[0], x[1]);
  Mma16816(acc1, a.z, b.z, a.w, b.w, x[2], x[3]);
}
__device__ __forceinline__ void MmaStep(float (&acc0)[4], float (&acc1)[4], const uint4& a,
                                        const uint4& b, const XFrag& x) {
  MmaStep(acc0, acc1, a, b, x.hi);
}
__device__ __forceinline__ void MmaStep(float (&acc0)[4], float (&acc1)[4], const uint4& a,
                                        const uint4& b, const XFragSplit& x) {
  MmaStep(acc0, acc1, a, b, x.hi);
  MmaStep(acc0, acc1, a, b, x.lo);
}

// Block = 8 warps = (8 / split) groups of `split` warps; group gg owns 16-row tile
// blockIdx.x * groups + gg, and its warps split the ceil(k / 32) k steps into `split`
// contiguous slices, or (INTERLEAVE) take batches of U steps in turn, so that the group streams
// `split` consecutive batches of its rows at a time (on long rows the contiguous slices make
// 16 x split short runs). A lane issues the weight loads of U steps (2 U loads) before the first
// MMA; the first batch before GridDependencyWait, as GemvKernel. x is read four steps at a
// time. Dead steps (past the slice or k) load zeros. Partial tiles meet in shared memory and
// are added in slice order, so the result does not depend on timing; the epilogues are
// GemvKernel's, for `rows` input rows.
template <int U, typename XT, int EPI = kEpiStore, bool INTERLEAVE = false>
__global__ void __launch_bounds__(kThreads)
    GemvMmaKernel(const __nv_bfloat16* w, const XT* x, int rows, int n, int k, int split, float* y,
                  __nv_bfloat16* act, const QkvRopeParams rope) {
  static_assert(U % 2 == 0, "x is read in groups of two or four steps");
  constexpr int XG = U < 4 ? U : 4;
  __shared__ float part[kWarps][kMmaTileRows][8];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int groups = kWarps / split, gg = warp / split, slice = warp % split;
  const int tile = blockIdx.x * groups + gg;
  const int half = rope.head_dim / 2;
  const uint4* wa =
      reinterpret_cast<const uint4*>(w + size_t(MmaTileWeightRow<EPI>(tile, g, n, half)) * k);
  const uint4* wb =
      reinterpret_cast<const uint4*>(w + size_t(MmaTileWeightRow<EPI>(tile, g + 8, n, half)) * k);
  const int chunks = k / 8, steps = (chunks + 3) / 4;
  // Contiguous slices, or (INTERLEAVE) batches of U steps dealt round-robin to the group's warps,
  // so that the group reads split * U consecutive steps of its rows at a time.
  const int s1 = INTERLEAVE ? steps : int(int64_t(slice + 1) * steps / split);
  const int stride = INTERLEAVE ? U * split : U;
  uint4 va[U], vb[U];
  int s = INTERLEAVE ? slice * U : int(int64_t(slice) * steps / split);
  auto load_batch = [&] {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = 4 * (s + u) + t;
      const bool live = s + u < s1 && c < chunks;
      va[u] = LoadW(wa + c, live);
      vb[u] = LoadW(wb + c, live);
    }
  };
  load_batch();
  // The QKV epilogue's prologue (rotation, bias, cache page) for this thread's first item (the
  // loop below); later items, if any, compute theirs there.
  PairPrologue pro;
  if constexpr (EPI == kEpiQkvRope) {
    const int i = threadIdx.x, grp = i / (8 * rows), m = (i / 8) % rows;
    if (grp < groups) pro = QkvPairPrologue(rope, m, (blockIdx.x * groups + grp) * 8 + i % 8, n >> 1);
  }
  GridDependencyWait();
  // As GemvKernel: an appending QKV GEMV lets the next kernel launch only as it exits.
  if (EPI != kEpiQkvRope || rope.kv.k == nullptr) LaunchDependents();
  const bool xrow = g < rows;
  const XT* xr = x + size_t(xrow ? g : 0) * k;
  float acc0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, acc1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (;;) {
#pragma unroll
    for (int u0 = 0; u0 < U; u0 += XG) {
      XFragOf<XT> xf[XG];
#pragma unroll
      for (int i = 0; i < XG; ++i) {
        const int c = 4 * (s + u0 + i) + t;
        LoadXFrag(xr, size_t(c) * 8, xrow && s + u0 + i < s1 && c < chunks, xf[i]);
      }
#pragma unroll
      for (int i = 0; i < XG; ++i) MmaStep(acc0, acc1, va[u0 + i], vb[u0 + i], xf[i]);
    }
    s += stride;
    if (s >= s1) break;
    load_batch();
  }
  // c0, c1: tile row g, input rows 2t, 2t + 1; c2, c3: tile row g + 8.
  part[warp][g][2 * t] = acc0[0] + acc1[0];
  part[warp][g][2 * t + 1] = acc0[1] + acc1[1];
  part[warp][g + 8][2 * t] = acc0[2] + acc1[2];
  part[warp][g + 8][2 * t + 1] = acc0[3] + acc1[3];
  __syncthreads();
  auto sum = [&](int grp, int r, int m) {
    float v = 0.0f;
    for (int q = 0; q < split; ++q) v += part[grp * split + q][r][m];
    return v;
  };
  if constexpr (EPI == kEpiStore) {
    for (int i = threadIdx.x; i < groups * kMmaTileRows * rows; i += blockDim.x) {
      const int grp = i / (kMmaTileRows * rows), m = (i / kMmaTileRows) % rows,
                r = i % kMmaTileRows;
      const int j = (blockIdx.x * groups + grp) * kMmaTileRows + r;
      if (j < n) y[size_t(m) * n + j] = sum(grp, r, m);
    }
  } else {
    const int pairs = n >> 1;
    for (int i = threadIdx.x; i < groups * 8 * rows; i += blockDim.x) {
      const int grp = i / (8 * rows), m = (i / 8) % rows, r = i % 8;
      const int p = (blockIdx.x * groups + grp) * 8 + r;
      if (p >= pairs) continue;
      const float a = sum(grp, r, m), b = sum(grp, r + 8, m);
      if constexpr (EPI == kEpiSwiGlu) {
        act[size_t(m) * pairs + p] = __float2bfloat16(a / (1.0f + expf(-a)) * b);
      } else {
        const PairPrologue pp = i == int(threadIdx.x) ? pro : QkvPairPrologue(rope, m, p, pairs);
        QkvRopePairAt(rope, m, p / half, p % half, a, b, pp.cs, pp.sn, pp.bias, pp.page);
      }
    }
  }
}

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

// Dispatch of GemvMmaKernel over k steps per load batch (2, 4, 8).
template <bool INTERLEAVE, typename XT, int EPI>
cudaError_t LaunchGemvMmaSteps(const GemvPlan& plan, const cudaLaunchConfig_t& cfg,
                               const __nv_bfloat16* w, const XT* x, int rows, int n, int k,
                               float* y, __nv_bfloat16* act, const QkvRopeParams& rope) {
  const int u = plan.loads_per_lane, s = plan.k_split;
  if (u <= 2) {
    return cudaLaunchKernelEx(&cfg, GemvMmaKernel<2, XT, EPI, INTERLEAVE>, w, x, rows, n, k, s, y,
                              act, rope);
  }
  if (u <= 4) {
    return cudaLaunchKernelEx(&cfg, GemvMmaKernel<4, XT, EPI, INTERLEAVE>, w, x, rows, n, k, s, y,
                              act, rope);
  }
  return cudaLaunchKernelEx(&cfg, GemvMmaKernel<8, XT, EPI, INTERLEAVE>, w, x, rows, n, k, s, y,
                            act, rope);
}

// ... and over the k order: interleaved batches for bf16 x only (with fp32 x, two MMAs a step,
// the interleaved kernel needs 136 registers at 8 steps, one block a multiprocessor).
template <typename XT, int EPI = kEpiStore>
cudaError_t LaunchGemvMmaKernel(const GemvPlan& plan, const cudaLaunchConfig_t& cfg,
                                const __nv_bfloat16* w, const XT* x, int rows, int n, int k,
                                float* y, __nv_bfloat16* act = nullptr,
                                const QkvRopeParams& rope = {}) {
  if constexpr (std::is_same_v<XT, __nv_bfloat16>) {
    if (plan.interleave) {
      return LaunchGemvMmaSteps<true, XT, EPI>(plan, cfg, w, x, rows, n, k, y, act, rope);
    }
  }
  return LaunchGemvMmaSteps<false, XT, EPI>(plan, cfg, w, x, rows, n, k, y, act, rope);
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

// A launch of a RowNorm consumer: the dynamic shared memory its block sums are staged in.
cudaLaunchConfig_t WithRowNormStaging(cudaLaunchConfig_t cfg, const RowNorm& norm) {
  cfg.dynamicSmemBytes = norm.squares != nullptr ? size_t(norm.count) * sizeof(float) : 0;
  return cfg;
}

absl::Status CheckRowNorm(const char* name, const RowNorm& norm, int rows) {
  if (norm.squares != nullptr && (rows != 1 || norm.dim <= 0 || !(norm.eps >= 0.0f) ||
                                  norm.count < 1 || norm.count > kRowNormMaxSquares)) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": a RowNorm input takes one row, dim > 0, eps >= 0 and 1..",
                     kRowNormMaxSquares, " block sums, got rows ", rows, " dim ", norm.dim, " eps ",
                     norm.eps, " count ", norm.count));
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
          ? LaunchGemvMmaKernel<__nv_bfloat16, kEpiSwiGlu>(plan, launch.cfg, w, x, rows, 2 * inter,
                                                           k, nullptr, act)
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
  const cudaError_t err = plan.tensor_cores
                              ? LaunchGemvMmaKernel<__nv_bfloat16, kEpiQkvRope>(
                                    plan, launch.cfg, w, x, p.rows, n, k, nullptr, nullptr, p)
                              : LaunchGemvKernel<1, __nv_bfloat16, kEpiQkvRope>(
                                    plan.loads_per_lane, WithRowNormStaging(launch.cfg, norm), w, x,
                                    n, k, plan.k_split, nullptr, nullptr, p, GemvNormArgs{norm});
  return CudaStatus(err, "launching the GEMV (QKV epilogue)");
}

absl::Status GemvBf16Cuda(const __nv_bfloat16* w, const float* x, int rows, int n, int k, float* y,
                          cudaStream_t stream, const GemvOptions& options) {
  return LaunchGemv(w, x, rows, n, k, y, stream, options);
}

namespace {

template <typename XT>
absl::Status LaunchGemvResidual(const __nv_bfloat16* w, const XT* x, int n, int k, float* h,
                                const float* next_w, __nv_bfloat16* g, float* squares,
                                cudaStream_t stream, const GemvOptions& options) {
  if (n <= 0 || k <= 0 || k % 8 != 0 || h == nullptr || next_w == nullptr || g == nullptr ||
      squares == nullptr ||
      (reinterpret_cast<uintptr_t>(w) | reinterpret_cast<uintptr_t>(x)) % 16 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("GemvResidualBf16Cuda: bad shape n ", n, " k ", k,
                     " (k % 8 == 0, 16-byte aligned w and x, h, next_w, g and squares set)"));
  }
  const bool split_ok = options.k_split == 0 || options.k_split == 1 || options.k_split == 2 ||
                        options.k_split == 4 || options.k_split == 8;
  if (options.legacy || !split_ok || options.loads_per_lane < 0 || options.loads_per_lane > 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("GemvResidualBf16Cuda: bad options k_split ", options.k_split,
                     " loads_per_lane ", options.loads_per_lane, " legacy ", options.legacy));
  }
  const GemvPlan plan = PlanGemv(1, n, k, options);
  const GemvLaunch launch(plan, options, stream);
  GemvNormArgs nf;
  nf.next_w = next_w;
  nf.g = g;
  nf.squares = squares;
  return CudaStatus(
      LaunchGemvKernel<1, XT, kEpiResidual>(plan.loads_per_lane, launch.cfg, w, x, n, k,
                                            plan.k_split, h, nullptr, QkvRopeParams{}, nf),
      "launching the GEMV (residual epilogue)");
}

}  // namespace

int GemvResidualSquares(int n, int k, const GemvOptions& options) {
  return int(PlanGemv(1, n, k, options).blocks);
}

absl::Status GemvResidualBf16Cuda(const __nv_bfloat16* w, const __nv_bfloat16* x, int n, int k,
                                  float* h, const float* next_w, __nv_bfloat16* g, float* squares,
                                  cudaStream_t stream, const GemvOptions& options) {
  return LaunchGemvResidual(w, x, n, k, h, next_w, g, squares, stream, options);
}

absl::Status GemvResidualBf16Cuda(const __nv_bfloat16* w, const float* x, int n, int k, float* h,
                                  const float* next_w, __nv_bfloat16* g, float* squares,
                                  cudaStream_t stream, const GemvOptions& options) {
  return LaunchGemvResidual(w, x, n, k, h, next_w, g, squares, stream, options);
}

absl::Status GemvBf16Cuda(const __nv_bfloat16* w, const __nv_bfloat16* x, int rows, int n, int k,
                          float* y, cudaStream_t stream) {
  return LaunchGemv(w, x, rows, n, k, y, stream, GemvOptions{});
}

absl::Status GemvBf16Cuda(const __nv_bfloat16* w, const float* x, int rows, int n, int k, float* y,
                          cudaStream_t stream) {
  return LaunchGemv(w, x, rows, n, k, y, stream, GemvOptions{});
}

}  // namespace resa::cuda
