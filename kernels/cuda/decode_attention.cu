// Split-KV flash-decoding over the paged bf16 cache, dense or block-sparse (one kernel).
//
// Grid: x = split of the sequence's block list, y = (KV head, chunk of <= 8 query heads of its
// group), z = sequence. A CTA of 8 warps streams its split's pages; each warp takes every 8th page
// and keeps its own online-softmax state; the CTA merges its warps, and when a sequence has
// several splits the last CTA to arrive (atomic counter) merges them, so one launch does it all.
//
// Tensor cores without shared memory: every warp loads a whole 16-token page straight into
// registers with 16-byte streaming loads and feeds mma.m16n8k16 from them.
//  * S = Q K^T with A = Q (rows = the group's query heads, padded to 16) and B = K^T (n = 8
//    tokens, two n-tiles per page). The reduction index d may be permuted freely as long as Q
//    and K use the same permutation, so each lane loads 16 contiguous bytes of its K row and the
//    matching 16 bytes of q: lane (r, c) = (lane / 4, lane % 4) holds dims 8c + 32s + [0, 8).
//  * O^T = V^T P^T with A = V^T (m = 16 dims, k = 16 tokens) and B = P^T, whose fragment is
//    exactly the S accumulator of the same lane (the FlashAttention-2 register reuse). The m
//    (dim) index is permuted too: lane r owns dims 64j + 8r + [0, 8), loaded as 16-byte rows of
//    tokens 2c, 2c+1, 2c+8, 2c+9 and paired with byte permutes.
// The query heads of a GQA group share every K/V byte read; K/V are read exactly once.
#include <cmath>
#include <cstdint>

#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_util.cuh"

namespace resa::cuda {
namespace {

using detail::kLn2;
using detail::kLog2e;

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kHeadsPerCta = 8;  // the MMA's n for P^T: query heads of one group per CTA
constexpr int kCtasPerSm = 2;

struct DecodePlan {
  int head_chunks = 0;
  int pages_per_split = 0;
  int max_splits = 0;
  size_t o_offset = 0, lse_offset = 0, counter_offset = 0, bytes = 0;
};

struct DecodeArgs {
  DecodeAttentionParams p;
  int group;
  int head_chunks;
  int pages_per_split;
  int max_splits;
  float scale_log2;
  float* ws_o;    // [batch][y][max_splits][8][head_dim], normalised partial O
  float* ws_lse;  // [batch][y][max_splits][8], natural log
  int* counters;  // [batch][y]
};

size_t AlignUp(size_t x) { return (x + 255) & ~size_t(255); }

DecodePlan PlanDecode(const DecodeAttentionParams& p) {
  DecodePlan plan;
  const int hkv = p.kv.num_kv_heads > 0 ? p.kv.num_kv_heads : 1;
  const int group = p.num_heads / hkv;
  plan.head_chunks = (group + kHeadsPerCta - 1) / kHeadsPerCta;
  const int64_t max_blocks =
      p.blocks != nullptr ? p.max_num_blocks : (int64_t(p.max_num_keys) + kPageTokens - 1) / kPageTokens;
  const int64_t ys = int64_t(hkv) * plan.head_chunks;
  const int64_t work = int64_t(p.batch) * ys * max_blocks;
  const int64_t target_ctas = int64_t(MultiprocessorCount()) * kCtasPerSm;
  int64_t pps = (work + target_ctas - 1) / target_ctas;
  pps = pps < kWarps ? kWarps : pps;  // every warp gets at least one page
  plan.pages_per_split = int(pps);
  plan.max_splits = int(max_blocks > 0 ? (max_blocks + pps - 1) / pps : 1);
  const size_t slots = size_t(p.batch) * ys * plan.max_splits * kHeadsPerCta;
  plan.o_offset = 0;
  plan.lse_offset = AlignUp(slots * p.kv.head_dim * sizeof(float));
  plan.counter_offset = plan.lse_offset + AlignUp(slots * sizeof(float));
  plan.bytes = plan.counter_offset + AlignUp(size_t(p.batch) * ys * sizeof(int));
  return plan;
}

// Merges per-warp states (m in log2 units, l, unnormalised O) held in shared memory and hands
// each (head, dim) result to emit(head, dim, o, lse_ln).
template <int D, typename Emit>
__device__ void CombineWarps(const float (&sm_m)[kWarps][kHeadsPerCta],
                             const float (&sm_l)[kWarps][kHeadsPerCta],
                             const float (&sm_o)[kWarps][kHeadsPerCta][D], int nh, Emit emit) {
  for (int idx = threadIdx.x; idx < nh * D; idx += kThreads) {
    const int hh = idx / D, d = idx % D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, sm_m[w][hh]);
    float o = 0.0f, lse = -INFINITY;
    if (mx != -INFINITY) {
      float den = 0.0f, num = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float wt = exp2f(sm_m[w][hh] - mx);  // 0 for an empty warp (m = -inf)
        den += wt * sm_l[w][hh];
        num += wt * sm_o[w][hh][d];
      }
      if (den > 0.0f) {
        o = num / den;
        lse = (mx + log2f(den)) * kLn2;
      }
    }
    emit(hh, d, o, lse);
  }
}

template <int D>
__global__ void __launch_bounds__(kThreads, kCtasPerSm) DecodeKernel(const DecodeArgs a) {
  constexpr int KS = D / 32;  // 16-byte K loads per token row per lane
  constexpr int VJ = D / 64;  // 16-byte V loads per token row per lane
  constexpr int E = D / 16;   // m-tiles of O^T
  const DecodeAttentionParams& p = a.p;
  const int b = blockIdx.z;
  const int y = blockIdx.y;
  const int h = y / a.head_chunks;
  const int head_lo = h * a.group + (y % a.head_chunks) * kHeadsPerCta;
  const int nh = min(kHeadsPerCta, (h + 1) * a.group - head_lo);
  const int32_t num_keys = p.num_keys[b];
  const bool sparse = p.blocks != nullptr;
  const int32_t nblk = sparse ? p.num_blocks[b] : (num_keys + kPageTokens - 1) / kPageTokens;
  const int splits = max(1, (nblk + a.pages_per_split - 1) / a.pages_per_split);
  if (int(blockIdx.x) >= splits) return;
  const int32_t i0 = blockIdx.x * a.pages_per_split;
  const int32_t i1 = min(nblk, i0 + a.pages_per_split);
  const int32_t* table = p.page_tables + size_t(b) * p.page_table_stride;
  const int32_t* list =
      sparse ? p.blocks + (size_t(b) * p.kv.num_kv_heads + h) * p.blocks_stride : nullptr;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane / 4, c = lane % 4;

  // Q as A fragments: qa[s] = dims 8c + 32s + [0, 8) of head r (zero rows past the group).
  uint32_t qa[KS][4];
#pragma unroll
  for (int s = 0; s < KS; ++s) {
    uint4 w = make_uint4(0, 0, 0, 0);
    if (r < nh) {
      w = *reinterpret_cast<const uint4*>(p.q + (size_t(b) * p.num_heads + head_lo + r) * D +
                                          8 * c + 32 * s);
    }
    qa[s][0] = w.x, qa[s][1] = w.y, qa[s][2] = w.z, qa[s][3] = w.w;
  }

  const size_t head_stride = size_t(kPageTokens) * D;
  const size_t page_stride = size_t(p.kv.num_kv_heads) * head_stride;
  float m = -INFINITY;  // running max of head r, log2 units
  float l = 0.0f;       // this lane's share of head r's denominator
  float o[E][4];
#pragma unroll
  for (int i = 0; i < E; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;

  for (int32_t i = i0 + warp; i < i1; i += kWarps) {
    const int32_t blk = sparse ? list[i] : i;
    const int32_t page = table[blk];
    const __nv_bfloat16* kp = p.kv.k + page * page_stride + h * head_stride;
    const __nv_bfloat16* vp = p.kv.v + page * page_stride + h * head_stride;
    uint4 kr[2][KS];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
#pragma unroll
      for (int s = 0; s < KS; ++s) kr[half][s] = detail::LoadStream(kp + (r + 8 * half) * D + 8 * c + 32 * s);
    }
    uint32_t vw[4][4 * VJ];  // token rows 2c, 2c+1, 2c+8, 2c+9; dims 64j + 8r + [0, 8)
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      const int tok = 2 * c + (t & 1) + 8 * (t >> 1);
#pragma unroll
      for (int j = 0; j < VJ; ++j) {
        const uint4 w = detail::LoadStream(vp + tok * D + 64 * j + 8 * r);
        vw[t][4 * j] = w.x, vw[t][4 * j + 1] = w.y, vw[t][4 * j + 2] = w.z, vw[t][4 * j + 3] = w.w;
      }
    }

    float s0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, s1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int s = 0; s < KS; ++s) {
      detail::Mma16816(s0, qa[s][0], 0u, qa[s][1], 0u, kr[0][s].x, kr[0][s].y);
      detail::Mma16816(s0, qa[s][2], 0u, qa[s][3], 0u, kr[0][s].z, kr[0][s].w);
      detail::Mma16816(s1, qa[s][0], 0u, qa[s][1], 0u, kr[1][s].x, kr[1][s].y);
      detail::Mma16816(s1, qa[s][2], 0u, qa[s][3], 0u, kr[1][s].z, kr[1][s].w);
    }
    // This lane's logits of head r: tokens 2c, 2c+1 (s0) and 2c+8, 2c+9 (s1).
    const int valid = num_keys - blk * kPageTokens;
    float x[4] = {s0[0] * a.scale_log2, s0[1] * a.scale_log2, s1[0] * a.scale_log2,
                  s1[1] * a.scale_log2};
    if (valid < kPageTokens) {
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        const int tok = 2 * c + (t & 1) + 8 * (t >> 1);
        if (tok >= valid) {
          x[t] = -INFINITY;
#pragma unroll
          for (int w = 0; w < 4 * VJ; ++w) vw[t][w] = 0u;  // stale slots may hold NaN bits
        }
      }
    }
    const float page_max = detail::QuadMax(fmaxf(fmaxf(x[0], x[1]), fmaxf(x[2], x[3])));
    const float m_new = fmaxf(m, page_max);
    const float m_use = m_new == -INFINITY ? 0.0f : m_new;
    const float corr = exp2f(m - m_use);
    float pr[4];
#pragma unroll
    for (int t = 0; t < 4; ++t) pr[t] = exp2f(x[t] - m_use);
    l = l * corr + (pr[0] + pr[1]) + (pr[2] + pr[3]);
    m = m_new;
    // O^T columns are heads 2c and 2c+1, whose states live in lanes 8c and 8c+4.
    const float corr_a = __shfl_sync(0xffffffffu, corr, 8 * c);
    const float corr_b = __shfl_sync(0xffffffffu, corr, 8 * c + 4);
    const uint32_t pb0 = detail::PackBf16(pr[0], pr[1]);
    const uint32_t pb1 = detail::PackBf16(pr[2], pr[3]);
#pragma unroll
    for (int i = 0; i < E; ++i) {
      o[i][0] *= corr_a, o[i][1] *= corr_b, o[i][2] *= corr_a, o[i][3] *= corr_b;
      const int u0 = i, u1 = E + i;  // this lane's dim slots for rows r and r + 8 of m-tile i
      const uint32_t a0 = detail::PairHalves(vw[0][u0 / 2], vw[1][u0 / 2], u0 & 1);
      const uint32_t a1 = detail::PairHalves(vw[0][u1 / 2], vw[1][u1 / 2], u1 & 1);
      const uint32_t a2 = detail::PairHalves(vw[2][u0 / 2], vw[3][u0 / 2], u0 & 1);
      const uint32_t a3 = detail::PairHalves(vw[2][u1 / 2], vw[3][u1 / 2], u1 & 1);
      detail::Mma16816(o[i], a0, a1, a2, a3, pb0, pb1);
    }
  }
  l = detail::QuadSum(l);

  __shared__ float sm_m[kWarps][kHeadsPerCta];
  __shared__ float sm_l[kWarps][kHeadsPerCta];
  __shared__ float sm_o[kWarps][kHeadsPerCta][D];
  __shared__ int sm_last;
  if (c == 0) sm_m[warp][r] = m, sm_l[warp][r] = l;
  auto dim_of = [&](int u) { return 64 * (u / 8) + 8 * r + (u % 8); };
#pragma unroll
  for (int i = 0; i < E; ++i) {
    sm_o[warp][2 * c][dim_of(i)] = o[i][0];
    sm_o[warp][2 * c + 1][dim_of(i)] = o[i][1];
    sm_o[warp][2 * c][dim_of(E + i)] = o[i][2];
    sm_o[warp][2 * c + 1][dim_of(E + i)] = o[i][3];
  }
  __syncthreads();

  const size_t out_head = size_t(b) * p.num_heads + head_lo;
  if (splits == 1) {
    CombineWarps<D>(sm_m, sm_l, sm_o, nh, [&](int hh, int d, float ov, float lse) {
      p.out[(out_head + hh) * D + d] = ov;
      if (d == 0 && p.lse_ln != nullptr) p.lse_ln[out_head + hh] = lse;
    });
    return;
  }
  const size_t slot0 = (size_t(b) * gridDim.y + y) * a.max_splits;
  CombineWarps<D>(sm_m, sm_l, sm_o, nh, [&](int hh, int d, float ov, float lse) {
    const size_t slot = (slot0 + blockIdx.x) * kHeadsPerCta + hh;
    a.ws_o[slot * D + d] = ov;
    if (d == 0) a.ws_lse[slot] = lse;
  });
  __threadfence();
  __syncthreads();
  int* counter = a.counters + size_t(b) * gridDim.y + y;
  if (threadIdx.x == 0) sm_last = atomicAdd(counter, 1) == splits - 1;
  __syncthreads();
  if (!sm_last) return;
  if (threadIdx.x == 0) *counter = 0;  // ready for the next launch
  __threadfence();

  // Last CTA: merge the splits. Warp w folds splits w, w + 8, ... (online, log2 units); lane
  // owns dims [lane * D / 32, +D / 32) of every head; then the warps are merged as above.
  constexpr int PD = D / 32;
  float acc[kHeadsPerCta][PD], mx[kHeadsPerCta], den[kHeadsPerCta];
#pragma unroll
  for (int hh = 0; hh < kHeadsPerCta; ++hh) {
    mx[hh] = -INFINITY, den[hh] = 0.0f;
#pragma unroll
    for (int e = 0; e < PD; ++e) acc[hh][e] = 0.0f;
  }
  for (int s = warp; s < splits; s += kWarps) {
    const size_t slot = (slot0 + s) * kHeadsPerCta;
#pragma unroll
    for (int hh = 0; hh < kHeadsPerCta; ++hh) {
      if (hh >= nh) break;
      const float lse2 = __ldcg(a.ws_lse + slot + hh) * kLog2e;
      if (lse2 == -INFINITY) continue;
      const float m_new = fmaxf(mx[hh], lse2);
      const float c_old = exp2f(mx[hh] - m_new), c_new = exp2f(lse2 - m_new);
      const float* src = a.ws_o + (slot + hh) * D + lane * PD;
#pragma unroll
      for (int e = 0; e < PD; ++e) acc[hh][e] = acc[hh][e] * c_old + c_new * __ldcg(src + e);
      den[hh] = den[hh] * c_old + c_new;
      mx[hh] = m_new;
    }
  }
  __syncthreads();  // sm_* are reused
#pragma unroll
  for (int hh = 0; hh < kHeadsPerCta; ++hh) {
    if (lane == 0) sm_m[warp][hh] = mx[hh], sm_l[warp][hh] = den[hh];
#pragma unroll
    for (int e = 0; e < PD; ++e) sm_o[warp][hh][lane * PD + e] = acc[hh][e];
  }
  __syncthreads();
  CombineWarps<D>(sm_m, sm_l, sm_o, nh, [&](int hh, int d, float ov, float lse) {
    p.out[(out_head + hh) * D + d] = ov;
    if (d == 0 && p.lse_ln != nullptr) p.lse_ln[out_head + hh] = lse;
  });
}

absl::Status Validate(const DecodeAttentionParams& p) {
  if (p.kv.k == nullptr || p.kv.v == nullptr || p.q == nullptr || p.out == nullptr ||
      p.num_keys == nullptr || p.page_tables == nullptr) {
    return absl::InvalidArgumentError("DecodeAttentionCuda: null k, v, q, out, num_keys or page_tables");
  }
  if (p.kv.head_dim != 64 && p.kv.head_dim != 128) {
    return absl::InvalidArgumentError(absl::StrCat("DecodeAttentionCuda: head_dim ", p.kv.head_dim,
                                                   " (supported: 64, 128)"));
  }
  if (p.kv.num_kv_heads <= 0 || p.num_heads <= 0 || p.num_heads % p.kv.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("DecodeAttentionCuda: num_heads ", p.num_heads,
                                                   " is not a multiple of num_kv_heads ",
                                                   p.kv.num_kv_heads));
  }
  if (p.batch <= 0 || p.batch > 65535 || p.max_num_keys < 0 || p.page_table_stride <= 0) {
    return absl::InvalidArgumentError("DecodeAttentionCuda: bad batch, max_num_keys or page_table_stride");
  }
  if (p.blocks != nullptr && (p.num_blocks == nullptr || p.blocks_stride <= 0 ||
                              p.max_num_blocks < 0 || p.max_num_blocks > p.blocks_stride)) {
    return absl::InvalidArgumentError(
        "DecodeAttentionCuda: sparse rows need num_blocks, blocks_stride >= max_num_blocks");
  }
  return absl::OkStatus();
}

}  // namespace

size_t DecodeAttentionWorkspaceBytes(const DecodeAttentionParams& p) {
  return PlanDecode(p).bytes;
}

absl::Status DecodeAttentionCuda(const DecodeAttentionParams& p, cudaStream_t stream) {
  if (auto st = Validate(p); !st.ok()) return st;
  const DecodePlan plan = PlanDecode(p);
  if (p.workspace == nullptr || p.workspace_bytes < plan.bytes) {
    return absl::InvalidArgumentError(absl::StrCat("DecodeAttentionCuda: workspace of ",
                                                   p.workspace_bytes, " bytes, need ", plan.bytes));
  }
  DecodeArgs a;
  a.p = p;
  a.group = p.num_heads / p.kv.num_kv_heads;
  a.head_chunks = plan.head_chunks;
  a.pages_per_split = plan.pages_per_split;
  a.max_splits = plan.max_splits;
  a.scale_log2 = p.scale * kLog2e;
  char* ws = static_cast<char*>(p.workspace);
  a.ws_o = reinterpret_cast<float*>(ws + plan.o_offset);
  a.ws_lse = reinterpret_cast<float*>(ws + plan.lse_offset);
  a.counters = reinterpret_cast<int*>(ws + plan.counter_offset);
  const dim3 grid(plan.max_splits, p.kv.num_kv_heads * plan.head_chunks, p.batch);
  if (p.kv.head_dim == 64) {
    DecodeKernel<64><<<grid, kThreads, 0, stream>>>(a);
  } else {
    DecodeKernel<128><<<grid, kThreads, 0, stream>>>(a);
  }
  return CheckLaunch(p.blocks != nullptr ? "DecodeKernel (sparse)" : "DecodeKernel (dense)");
}

}  // namespace resa::cuda
