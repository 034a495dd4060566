// One warp's step of the decode attention over one 16-token page, shared by the decode kernel
// (decode_attention.cu) and the selection kernel's speculative attention (selection.cu), so
// both compute a page exactly alike.
//
// Tensor cores without shared-memory staging: the warp loads the whole page straight into
// registers with 16-byte streaming loads and feeds mma.m16n8k16 from them.
//  * S = Q K^T with A = Q (rows = the group's query heads, padded to 16) and B = K^T (n = 8
//    tokens, two n-tiles per page). The reduction index d may be permuted freely as long as Q
//    and K use the same permutation, so each lane loads 16 contiguous bytes of its K row and the
//    matching 16 bytes of q: lane (r, c) = (lane / 4, lane % 4) holds dims 8c + 32s + [0, 8).
//  * O^T = V^T P^T with A = V^T (m = 16 dims, k = 16 tokens) and B = P^T, whose fragment is
//    exactly the S accumulator of the same lane (the FlashAttention-2 register reuse). The m
//    (dim) index is permuted too: lane r owns dims 64j + 8r + [0, 8), loaded as 16-byte rows of
//    tokens 2c, 2c+1, 2c+8, 2c+9 and paired with byte permutes.
#pragma once

#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/paged_kv_cuda.h"

namespace resa::cuda::decode_page {

constexpr int kHeads = 8;  // the MMA's n for P^T: query heads of one group a CTA

// A warp's online-softmax state: lane (r, c) holds head r's running max m (log2 units, the
// same in the quad), its share l of head r's denominator, and o[i][0..3], O^T elements of
// m-tile i: dims 64 (u / 8) + 8 r + u % 8 for u = i (elements 0, 1) and u = E + i (2, 3), of
// heads 2c (elements 0, 2) and 2c + 1 (1, 3), unnormalised.
template <int D>
struct WarpState {
  static constexpr int E = D / 16;  // m-tiles of O^T
  float m = -INFINITY;
  float l = 0.0f;
  float o[E][4] = {};
};

// Folds page (kp, vp) into the warp's state: sq holds the kHeads query heads (bf16, rows past
// the group zero) in shared memory, `valid` the page's valid tokens (1-16; later slots are
// masked and their V zeroed: stale slots may hold NaN bits), scale_log2 the softmax scale times
// log2(e). All 32 lanes call.
template <int D>
__device__ __forceinline__ void AttendPage(const __nv_bfloat16* sq, const __nv_bfloat16* kp,
                                           const __nv_bfloat16* vp, int valid, float scale_log2,
                                           WarpState<D>& st) {
  constexpr int KS = D / 32;  // 16-byte K loads per token row per lane
  constexpr int VJ = D / 64;  // 16-byte V loads per token row per lane
  constexpr int E = D / 16;
  const int lane = int(threadIdx.x % 32), r = lane / 4, c = lane % 4;
  uint4 kr[2][KS];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
#pragma unroll
    for (int s = 0; s < KS; ++s) {
      kr[half][s] = detail::LoadStream(kp + (r + 8 * half) * D + 8 * c + 32 * s);
    }
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
    const uint4 qa = *reinterpret_cast<const uint4*>(sq + r * D + 8 * c + 32 * s);
    detail::Mma16816(s0, qa.x, 0u, qa.y, 0u, kr[0][s].x, kr[0][s].y);
    detail::Mma16816(s0, qa.z, 0u, qa.w, 0u, kr[0][s].z, kr[0][s].w);
    detail::Mma16816(s1, qa.x, 0u, qa.y, 0u, kr[1][s].x, kr[1][s].y);
    detail::Mma16816(s1, qa.z, 0u, qa.w, 0u, kr[1][s].z, kr[1][s].w);
  }
  // This lane's logits of head r: tokens 2c, 2c+1 (s0) and 2c+8, 2c+9 (s1).
  float x[4] = {s0[0] * scale_log2, s0[1] * scale_log2, s1[0] * scale_log2, s1[1] * scale_log2};
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
  const float m_new = fmaxf(st.m, page_max);
  const float m_use = m_new == -INFINITY ? 0.0f : m_new;
  const float corr = exp2f(st.m - m_use);
  float pr[4];
#pragma unroll
  for (int t = 0; t < 4; ++t) pr[t] = exp2f(x[t] - m_use);
  st.l = st.l * corr + (pr[0] + pr[1]) + (pr[2] + pr[3]);
  st.m = m_new;
  // O^T columns are heads 2c and 2c+1, whose states live in lanes 8c and 8c+4.
  const float corr_a = __shfl_sync(0xffffffffu, corr, 8 * c);
  const float corr_b = __shfl_sync(0xffffffffu, corr, 8 * c + 4);
  const uint32_t pb0 = detail::PackBf16(pr[0], pr[1]);
  const uint32_t pb1 = detail::PackBf16(pr[2], pr[3]);
#pragma unroll
  for (int i = 0; i < E; ++i) {
    st.o[i][0] *= corr_a, st.o[i][1] *= corr_b, st.o[i][2] *= corr_a, st.o[i][3] *= corr_b;
    const int u0 = i, u1 = E + i;  // this lane's dim slots for rows r and r + 8 of m-tile i
    const uint32_t a0 = detail::PairHalves(vw[0][u0 / 2], vw[1][u0 / 2], u0 & 1);
    const uint32_t a1 = detail::PairHalves(vw[0][u1 / 2], vw[1][u1 / 2], u1 & 1);
    const uint32_t a2 = detail::PairHalves(vw[2][u0 / 2], vw[3][u0 / 2], u0 & 1);
    const uint32_t a3 = detail::PairHalves(vw[2][u1 / 2], vw[3][u1 / 2], u1 & 1);
    detail::Mma16816(st.o[i], a0, a1, a2, a3, pb0, pb1);
  }
}

// Dim of O^T slot u (0 <= u < 2E) of lane row r.
__device__ __forceinline__ int DimOf(int u, int r) { return 64 * (u / 8) + 8 * r + (u % 8); }

}  // namespace resa::cuda::decode_page
