// Helpers shared by the CUDA model-op tests (model_ops_cuda_test.cc, gemv_epilogue_cuda_test.cc).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cuda/cuda_test_util.h"
#include "kernels/testing/tolerance.h"
#include "runtime/engine/cuda/model_ops_cuda.h"

namespace resa::cuda::ops_test {

using ::resa::testing::AllClose;
using ::resa::testing::Tolerance;
using testing::AsBf16;
using testing::DeviceBuffer;
using testing::FromBf16;

// One bf16 rounding step apart (outputs stored as bf16 after fp32 maths that may differ in the
// last fp32 bits, e.g. FMA contraction or expf vs std::exp).
inline constexpr Tolerance kBf16Ulp{1e-6, 8e-3};
// fp32 accumulation of bf16 products vs an fp64 reference.
inline constexpr Tolerance kF32Sum{1e-4, 1e-3};

inline std::vector<float> Noise(size_t n, uint32_t seed, float scale = 1.0f) {
  return testing::RandomBf16Values(n, seed, scale);
}
inline std::vector<float> Bf16ToFloat(const std::vector<uint16_t>& x) {
  std::vector<float> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = FromBf16(x[i]);
  return y;
}

class CudaOpsTest : public testing::CudaTest {};

// QkvRopeParams for `rows` rows (theta 1e6) writing bf16 q, k, v into the given buffers.
inline QkvRopeParams QkvRopeFor(int rows, int heads, int kv_heads, int d, const float* qkv,
                                const float* bias, const int32_t* positions,
                                DeviceBuffer<uint16_t>& q, DeviceBuffer<uint16_t>& k,
                                DeviceBuffer<uint16_t>& v) {
  QkvRopeParams p;
  p.qkv = qkv;
  p.bias = bias;
  p.positions = positions;
  p.rows = rows;
  p.num_heads = heads;
  p.num_kv_heads = kv_heads;
  p.head_dim = d;
  p.theta = 1e6f;
  p.q = AsBf16(q.get());
  p.k = AsBf16(k.get());
  p.v = AsBf16(v.get());
  return p;
}

}  // namespace resa::cuda::ops_test
