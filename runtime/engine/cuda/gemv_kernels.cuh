// The decode GEMV's kernels (gemv_cuda.cu plans and launches them; internal to that file): one
// input row on the CUDA cores (GemvKernel, with the fused SwiGLU / QKV / residual epilogues and
// RowNorm inputs), batches of 2-8 rows on the tensor cores (GemvMmaKernel), the previous kernel
// as the benchmark's baseline (LegacyGemvKernel), and the device pieces they share.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch.h"
#include "runtime/engine/cuda/argmax_key.cuh"
#include "runtime/engine/cuda/model_ops_common.cuh"
#include "runtime/engine/cuda/model_ops_cuda.h"

namespace resa::cuda::gemv_internal {

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
// output rows are logical: pairs (2i, 2i + 1) of weight rows meet in one block (GemvKernel);
// kEpiArgMax stores y and folds the block's arg-max into GemvNormArgs::argmax.
enum GemvEpilogue : int { kEpiStore, kEpiSwiGlu, kEpiQkvRope, kEpiResidual, kEpiArgMax };

// The RMSNorms of a GEMV step inside its GEMVs (GemvResidualBf16Cuda, RowNorm): a producer
// (kEpiResidual: o_proj, down) adds its sums into the residual h, writes g = bf16(h * next_w)
// and its block's sum of h^2 for each input row; a consumer (kEpiSwiGlu, kEpiQkvRope with
// norm.squares set: gate_up, qkv) reads g as its x and scales each row's sums by that row's
// 1 / rms before its epilogue. In the one-row kernel neither holds a register more across its
// weight loop than the plain GEMV (that costs warps a multiprocessor at 32 registers): what they
// read besides x goes to shared memory by cp.async, issued before the loop, read after it
// (GemvMmaKernel: its own comment).
struct GemvNormArgs {
  RowNorm norm;
  const float* next_w = nullptr;
  __nv_bfloat16* g = nullptr;
  float* squares = nullptr;
  // kEpiArgMax (GemvArgMaxBf16Cuda): the arg-max key of y (argmax_key.cuh), atomicMax'd.
  unsigned long long* argmax = nullptr;
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
// append's summary reads them) are prefetched into L1. The GEMVs compute it for their first
// epilogue item before GridDependencyWait: the fp64 pow and sincos and the loads then overlap the
// weight loads and the previous kernel instead of following the reduction. Positions and page
// tables come from the host (the step's metadata), the bias is a weight, and the page's other keys
// were written by earlier steps: none by the kernel just before.
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
// The SwiGLU, residual and arg-max one-row kernels at 2 loads a lane (the plans' default) stay at
// 32 registers, 8 blocks a multiprocessor, as the plain one: their RowNorm code would take 36-44.
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
  static_assert(EPI != kEpiArgMax || (M == 1 && kWarps * R <= 32),
                "the arg-max epilogue: one input row, a block's rows in one warp");
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
  // The next kernel may launch now, the appending QKV GEMV's too: its dense decode (no thread-
  // block clusters since the decode's merge kernel) sits in its own wait on free SMs, having
  // staged what it can (H200, e2e dense batch 1, same call, HEAD -> early: 1.5B 32K 1.491 /
  // 1.489 -> 1.474 / 1.478 ms, 256K 2.939 / 2.933 -> 2.919 / 2.926; 7B 32K 4.125 / 4.127 ->
  // 4.111 / 4.113, 256K unchanged. With the decode's 8-CTA clusters of runs 17-38 it was up
  // to 24% slower: docs/cuda_backend.md, run 17).
  LaunchDependents();
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
  } else if constexpr (EPI == kEpiArgMax) {
    // y as StoreRowSums stores it (lane i: row i of the block), then the block's largest key
    // (a butterfly of 64-bit maxima) goes into the slot, by an atomic only when it is larger
    // than what the slot already holds: most of the grid's blocks write nothing.
    if (warp == 0) {
      uint64_t best = 0;
      const int gg = lane / R, r = lane % R;
      const int j = (blockIdx.x * groups + gg) * R + r;
      if (lane < groups * R && j < n) {
        float sum = 0.0f;
        for (int s = 0; s < split; ++s) sum += part[gg * split + s][0][r];
        y[j] = sum;
        best = argmax_internal::ArgMaxEntry(sum, j);
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        const uint64_t other = __shfl_xor_sync(0xffffffffu, best, o);
        best = other > best ? other : best;
      }
      if (lane == 0 && best > *static_cast<volatile unsigned long long*>(nf.argmax)) {
        atomicMax(nf.argmax, static_cast<unsigned long long>(best));
      }
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

// The weight row behind row r (0..15) of 16-row tile `tile` of an n-row GEMV: kEpiStore and
// kEpiResidual row 16 tile + r; the pair epilogues put the first rows of pairs 8 tile .. 8 tile
// + 7 in rows 0..7 and their second rows in 8..15, so a lane's accumulators c0 and c2 are one pair:
// kEpiSwiGlu gate row p and up row n / 2 + p; kEpiQkvRope the RoPE pair (i, i + half) of a
// head. Rows past the end read the last valid row (computed, dropped).
template <int EPI>
__device__ __forceinline__ int MmaTileWeightRow(int tile, int r, int n, int half) {
  if constexpr (EPI == kEpiStore || EPI == kEpiResidual) {
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
// Fused norms (GemvNormArgs, as GemvKernel's, one set of block sums per input row):
//  * kEpiResidual: h[m][j] += the sum, g[m][j] = bf16(h * next_w[j]), and each row's sum of the
//    new h^2 over the block's output rows (in row order) into squares[m * gridDim.x + block];
//    next_w is staged by cp.async before GridDependencyWait, the residual after it, both
//    before the loop;
//  * NORM (kEpiSwiGlu, kEpiQkvRope): warp m < rows computes row m's 1 / rms from its block sums
//    after GridDependencyWait, with the first weight batch in flight, and it scales that row's
//    sums. (Staged in shared memory and added after the loop instead, as the one-row kernel
//    does, the 1.5B gate_up at 8 rows took 20.4 us against the plain SwiGLU twin's 16.0 on the
//    H200; with every warp adding every row there, 24.2; this way 17.8.)
template <int U, typename XT, int EPI = kEpiStore, bool INTERLEAVE = false, bool NORM = false>
__global__ void __launch_bounds__(kThreads)
    GemvMmaKernel(const __nv_bfloat16* w, const XT* x, int rows, int n, int k, int split, float* y,
                  __nv_bfloat16* act, const QkvRopeParams rope, const GemvNormArgs nf) {
  static_assert(U % 2 == 0, "x is read in groups of two or four steps");
  static_assert(!NORM || EPI == kEpiSwiGlu || EPI == kEpiQkvRope,
                "RowNorm inputs: the SwiGLU and QKV kernels");
  static_assert(kGemvMaxRows <= kWarps, "a warp a row for the RowNorm scales");
  constexpr int XG = U < 4 ? U : 4;
  constexpr bool kResidual = EPI == kEpiResidual;
  __shared__ float part[kWarps][kMmaTileRows][8];
  // kEpiResidual: the residual of the block's outputs (slot i of the epilogue's loop), then the
  // squares of the new values in place; the next norm's weights of its rows.
  __shared__ float res_staged[kResidual ? kWarps * kMmaTileRows * 8 : 1];
  __shared__ float w_staged[kResidual ? kWarps * kMmaTileRows : 1];
  // NORM: each row's 1 / rms.
  __shared__ float norm_inv[NORM ? kWarps : 1];
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
    if (grp < groups)
      pro = QkvPairPrologue(rope, m, (blockIdx.x * groups + grp) * 8 + i % 8, n >> 1);
  }
  if constexpr (kResidual) {
    for (int i = threadIdx.x; i < groups * kMmaTileRows; i += blockDim.x) {
      const int j = blockIdx.x * groups * kMmaTileRows + i;
      if (j < n) CpAsync4(&w_staged[i], nf.next_w + j);
    }
  }
  GridDependencyWait();
  LaunchDependents();  // as GemvKernel, the appending QKV GEMV's too
  if constexpr (kResidual) {
    for (int i = threadIdx.x; i < groups * kMmaTileRows * rows; i += blockDim.x) {
      const int grp = i / (kMmaTileRows * rows), m = (i / kMmaTileRows) % rows,
                r = i % kMmaTileRows;
      const int j = (blockIdx.x * groups + grp) * kMmaTileRows + r;
      if (j < n) CpAsync4(&res_staged[i], y + size_t(m) * n + j);
    }
    CpAsyncCommit();
  }
  if constexpr (NORM) {
    // Warp m < rows: row m's 1 / rms from the producer's block sums (added lane-strided, then
    // across the warp: the same bits in every block), while the first weight batch is in
    // flight; the epilogue reads it after the loop's barrier.
    if (warp < rows) {
      const float* sq = nf.norm.squares + warp * nf.norm.count;
      float ss = 0.0f;
      for (int i = lane; i < nf.norm.count; i += 32) ss += sq[i];
      ss = WarpSum(ss);
      if (lane == 0) norm_inv[warp] = rsqrtf(ss / float(nf.norm.dim) + nf.norm.eps);
    }
  }
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
  // Before the barrier: the next norm's weights, staged by other threads.
  if constexpr (kResidual) asm volatile("cp.async.wait_all;\n" ::: "memory");
  __syncthreads();
  auto sum = [&](int grp, int r, int m) {
    float v = 0.0f;
    for (int q = 0; q < split; ++q) v += part[grp * split + q][r][m];
    return v;
  };
  if constexpr (kResidual) {
    // Slot i: h += the sum (as AddRmsNormCuda adds the GEMV's y), g = bf16(h * next_w), the
    // slot then holds h^2; thread m < rows adds its row's squares in output-row order.
    for (int i = threadIdx.x; i < groups * kMmaTileRows * rows; i += blockDim.x) {
      const int grp = i / (kMmaTileRows * rows), m = (i / kMmaTileRows) % rows,
                r = i % kMmaTileRows;
      const int j = (blockIdx.x * groups + grp) * kMmaTileRows + r;
      float sq = 0.0f;
      if (j < n) {
        const float hn = res_staged[i] + sum(grp, r, m);
        y[size_t(m) * n + j] = hn;
        nf.g[size_t(m) * n + j] = __float2bfloat16(hn * w_staged[grp * kMmaTileRows + r]);
        sq = hn * hn;
      }
      res_staged[i] = sq;
    }
    __syncthreads();
    if (int(threadIdx.x) < rows) {
      const int m = threadIdx.x;
      float block_sum = 0.0f;
      for (int grp = 0; grp < groups; ++grp) {
        for (int r = 0; r < kMmaTileRows; ++r) {
          block_sum += res_staged[grp * kMmaTileRows * rows + m * kMmaTileRows + r];
        }
      }
      nf.squares[size_t(m) * gridDim.x + blockIdx.x] = block_sum;
    }
  } else if constexpr (EPI == kEpiStore) {
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
      float a = sum(grp, r, m), b = sum(grp, r + 8, m);
      if constexpr (NORM) a *= norm_inv[m], b *= norm_inv[m];
      if constexpr (EPI == kEpiSwiGlu) {
        act[size_t(m) * pairs + p] = __float2bfloat16(a / (1.0f + expf(-a)) * b);
      } else {
        const PairPrologue pp = i == int(threadIdx.x) ? pro : QkvPairPrologue(rope, m, p, pairs);
        QkvRopePairAt(rope, m, p / half, p % half, a, b, pp.cs, pp.sn, pp.bias, pp.page);
      }
    }
  }
}

}  // namespace resa::cuda::gemv_internal
