#include "kernels/cpu/ops.h"

#include <cmath>
#include <cstddef>
#include <vector>

namespace resa {

void RmsNorm(const float* x, const float* weight, int rows, int dim, float eps, float* out) {
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + size_t(r) * dim;
    float* yr = out + size_t(r) * dim;
    double ss = 0.0;
    for (int i = 0; i < dim; ++i) ss += double(xr[i]) * xr[i];
    const float inv = float(1.0 / std::sqrt(ss / dim + double(eps)));
    for (int i = 0; i < dim; ++i) yr[i] = xr[i] * inv * weight[i];
  }
}

void RopeNeox(float* x, int rows, int num_heads, int head_dim, const int32_t* positions,
              float theta) {
  const int half = head_dim / 2;
  std::vector<double> inv_freq(half);
  for (int i = 0; i < half; ++i) inv_freq[i] = std::pow(double(theta), -2.0 * i / head_dim);
  std::vector<float> cs(half), sn(half);
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < half; ++i) {
      const double a = double(positions[r]) * inv_freq[i];
      cs[i] = float(std::cos(a));
      sn[i] = float(std::sin(a));
    }
    for (int h = 0; h < num_heads; ++h) {
      float* v = x + (size_t(r) * num_heads + h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * cs[i] - b * sn[i];
        v[i + half] = b * cs[i] + a * sn[i];
      }
    }
  }
}

void SiluMul(const float* gate, const float* up, int64_t n, float* out) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void AddInPlace(float* x, const float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

}  // namespace resa
