// Device pieces shared by the CUDA backend's element-wise ops (model_ops_cuda.cu) and its decode
// GEMVs (gemv_kernels.cuh): the block size, a warp sum, and the QKV epilogue of one RoPE pair
// (QkvRopeKernel and the QKV GEMV's fused epilogue share it, so both give the same bits).
// Internal to those two files.
#pragma once

#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/paged_kv_cuda.h"
#include "runtime/engine/cuda/model_ops_cuda.h"

namespace resa::cuda::ops_internal {

constexpr int kThreads = 256;

__device__ __forceinline__ float WarpSum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Element offset of token `pos`'s row of KV head h in `page` (paged_kv_cuda.h layout).
__device__ __forceinline__ size_t KvSlotOffset(const QkvRopeParams& p, int h, int32_t page,
                                               int32_t pos) {
  return ((size_t(page) * p.num_kv_heads + h) * kPageTokens + pos % kPageTokens) * p.head_dim;
}

// The cache page of row r's new token (QkvRopeParams::kv).
__device__ __forceinline__ int32_t KvPage(const QkvRopeParams& p, int r) {
  return p.page_table[size_t(r) * p.page_table_stride + p.positions[r] / kPageTokens];
}

// The cache append of one RoPE pair (i, i + d/2) of key head h of row r (QkvRopeParams::kv):
// stores it in its slot and recomputes those two dims of the page summary from the page's
// num_keys-valid slots in slot order, the new key taken from registers: the same fminf / fmaxf
// sequence as WriteKvCuda's RecomputeSummaryKernel, so the same bits. The summary is in the
// device layout (SummaryIndex, paged_kv_cuda.h). All 2 x 15 loads of the other slots are issued
// together (one round trip).
// page: row r's page for positions[r] (KvPage).
__device__ __forceinline__ void AppendKeyPair(const QkvRopeParams& p, int r, int h, int i,
                                              __nv_bfloat16 ka, __nv_bfloat16 kb, int32_t page) {
  const int d = p.head_dim, half = d / 2;
  const int32_t pos = p.positions[r], blk = pos / kPageTokens, own = pos % kPageTokens;
  const int valid = min(kPageTokens, p.num_keys[r] - blk * kPageTokens);
  __nv_bfloat16* base = p.kv.k + KvSlotOffset(p, h, page, blk * kPageTokens);
  base[size_t(own) * d + i] = ka;
  base[size_t(own) * d + i + half] = kb;
  __nv_bfloat16 xa[kPageTokens], xb[kPageTokens];
#pragma unroll
  for (int t = 0; t < kPageTokens; ++t) {
    const bool other = t < valid && t != own;
    xa[t] = other ? base[size_t(t) * d + i] : ka;
    xb[t] = other ? base[size_t(t) * d + i + half] : kb;
  }
  float mna = INFINITY, mxa = -INFINITY, mnb = INFINITY, mxb = -INFINITY;
#pragma unroll
  for (int t = 0; t < kPageTokens; ++t) {
    if (t < valid) {
      const float a = __bfloat162float(xa[t]), b = __bfloat162float(xb[t]);
      mna = fminf(mna, a), mxa = fmaxf(mxa, a);
      mnb = fminf(mnb, b), mxb = fmaxf(mxb, b);
    }
  }
  const int hkv = p.num_kv_heads;
  __nv_bfloat16* sm = p.kv.summary;
  sm[SummaryIndex(page, h, 0, i, hkv, d)] = __float2bfloat16(mna);
  sm[SummaryIndex(page, h, 1, i, hkv, d)] = __float2bfloat16(mxa);
  sm[SummaryIndex(page, h, 0, i + half, hkv, d)] = __float2bfloat16(mnb);
  sm[SummaryIndex(page, h, 1, i + half, hkv, d)] = __float2bfloat16(mxb);
}

// The NeoX RoPE rotation of pair i at positions[r]: the angle pos * theta^(-2i/d) in fp64,
// its cosine and sine rounded to fp32 (as the CPU RopeNeox).
__device__ __forceinline__ void RopeCosSin(const QkvRopeParams& p, int r, int i, float& cs,
                                           float& sn) {
  const double inv_freq = pow(double(p.theta), -2.0 * i / p.head_dim);
  double s, c;
  sincos(double(p.positions[r]) * inv_freq, &s, &c);
  cs = float(c);
  sn = float(s);
}

// The QKV bias of pair i of head `head` (zeros without one).
__device__ __forceinline__ float2 PairBias(const QkvRopeParams& p, int head, int i) {
  if (p.bias == nullptr) return make_float2(0.0f, 0.0f);
  const float* b = p.bias + size_t(head) * p.head_dim + i;
  return make_float2(b[0], b[p.head_dim / 2]);
}

// The QKV epilogue of one pair: a, b = qkv values (i, i + d/2) of head `head` (q heads, then
// k, then v) of row r; adds the bias (PairBias of the pair), rotates q and k by NeoX RoPE at
// positions[r] (cs, sn: RopeCosSin of the pair; unused for v heads) and stores bf16 q, k or v;
// with p.kv set, k and v also go to the cache (page: KvPage of row r, or -1 to look it up
// here). Shared by QkvRopeKernel and the QKV GEMV's epilogue, so both give the same bits.
__device__ __forceinline__ void QkvRopePairAt(const QkvRopeParams& p, int r, int head, int i,
                                              float a, float b, float cs, float sn, float2 bias,
                                              int32_t page = -1) {
  const int d = p.head_dim, half = d / 2;
  if (p.bias != nullptr) {
    a += bias.x;
    b += bias.y;
  }
  __nv_bfloat16* dst;
  if (head < p.num_heads) {
    dst = p.q + (size_t(r) * p.num_heads + head) * d;
  } else if (head < p.num_heads + p.num_kv_heads) {
    dst = p.k + (size_t(r) * p.num_kv_heads + (head - p.num_heads)) * d;
  } else {
    const int h = head - p.num_heads - p.num_kv_heads;
    dst = p.v + (size_t(r) * p.num_kv_heads + h) * d;
    const __nv_bfloat16 va = __float2bfloat16(a), vb = __float2bfloat16(b);
    dst[i] = va;
    dst[i + half] = vb;
    if (p.kv.k != nullptr) {
      if (page < 0) page = KvPage(p, r);
      __nv_bfloat16* slot = p.kv.v + KvSlotOffset(p, h, page, p.positions[r]);
      slot[i] = va;
      slot[i + half] = vb;
    }
    return;
  }
  const __nv_bfloat16 ra = __float2bfloat16(a * cs - b * sn),
                      rb = __float2bfloat16(b * cs + a * sn);
  dst[i] = ra;
  dst[i + half] = rb;
  if (head >= p.num_heads && p.kv.k != nullptr) {
    AppendKeyPair(p, r, head - p.num_heads, i, ra, rb, page >= 0 ? page : KvPage(p, r));
  }
}

}  // namespace resa::cuda::ops_internal
