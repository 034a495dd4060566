// The order of a greedy arg-max as 64-bit keys, shared by the sampling kernels (sampling_cuda.cu)
// and the lm_head GEMV's arg-max epilogue (gemv_kernels.cuh): the larger key is the larger logit,
// ties to the lower id, NaN never wins (the CPU twin's arg-max skips NaN; a row of NaN gives id
// 0). Internal to those files; ArgMaxKeyId (model_ops_cuda.h) reads an id back on the host.
#pragma once

#include <cstdint>

namespace resa::cuda::argmax_internal {

// Order-preserving key: a larger logit has a larger key. -0 counts as +0 (the CPU's == ties
// them); NaN gets key 0, below -inf, so it never wins.
__device__ __forceinline__ uint32_t Key(float v) {
  if (v != v) return 0u;
  uint32_t b = v == 0.0f ? 0u : __float_as_uint(v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float FromKey(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Element j (value v) in the arg-max order: (key, -id). Every element's is above 0.
__device__ __forceinline__ uint64_t ArgMaxEntry(float v, int j) {
  return (uint64_t(Key(v)) << 32) | uint64_t(~uint32_t(j));
}

// The larger of `best` and element j (value v) in the arg-max order.
__device__ __forceinline__ uint64_t ArgMaxStep(uint64_t best, float v, int j) {
  const uint64_t x = ArgMaxEntry(v, j);
  return x > best ? x : best;
}

}  // namespace resa::cuda::argmax_internal
