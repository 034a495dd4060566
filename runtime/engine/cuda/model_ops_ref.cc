#include "runtime/engine/cuda/model_ops_ref.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/ops.h"

namespace resa::cuda::ref {

float RoundBf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  u &= 0xffff0000u;
  float y;
  std::memcpy(&y, &u, 4);
  return y;
}

void Embed(const float* table, const int32_t* tokens, int rows, int hidden, float* h) {
  for (int r = 0; r < rows; ++r) {
    std::copy_n(table + size_t(tokens[r]) * hidden, hidden, h + size_t(r) * hidden);
  }
}

void AddRmsNorm(float* h, const float* add, const float* weight, int rows, int dim, float eps,
                float* x) {
  const size_t n = size_t(rows) * dim;
  if (add != nullptr) AddInPlace(h, add, int64_t(n));
  RmsNorm(h, weight, rows, dim, eps, x);
  for (size_t i = 0; i < n; ++i) x[i] = RoundBf16(x[i]);
}

void QkvRope(const float* qkv, const float* bias, const int32_t* positions, int rows,
             int num_heads, int num_kv_heads, int head_dim, float theta, float* q, float* k,
             float* v) {
  const int lq = num_heads * head_dim, lkv = num_kv_heads * head_dim, total = lq + 2 * lkv;
  std::vector<float> row(total);
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < total; ++i) {
      row[i] = qkv[size_t(r) * total + i] + (bias != nullptr ? bias[i] : 0.0f);
    }
    RopeNeox(row.data(), 1, num_heads, head_dim, positions + r, theta);
    RopeNeox(row.data() + lq, 1, num_kv_heads, head_dim, positions + r, theta);
    for (int i = 0; i < lq; ++i) q[size_t(r) * lq + i] = RoundBf16(row[i]);
    for (int i = 0; i < lkv; ++i) {
      k[size_t(r) * lkv + i] = RoundBf16(row[lq + i]);
      v[size_t(r) * lkv + i] = RoundBf16(row[lq + lkv + i]);
    }
  }
}

void SiluMul(const float* gu, int rows, int inter, float* act) {
  for (int r = 0; r < rows; ++r) {
    const float* g = gu + size_t(r) * 2 * inter;
    resa::SiluMul(g, g + inter, inter, act + size_t(r) * inter);
    for (int i = 0; i < inter; ++i) act[size_t(r) * inter + i] = RoundBf16(act[size_t(r) * inter + i]);
  }
}

void Gemv(const float* w, const float* x, int rows, int n, int k, float* y) {
  for (int m = 0; m < rows; ++m) {
    for (int j = 0; j < n; ++j) {
      double s = 0.0;
      for (int i = 0; i < k; ++i) s += double(w[size_t(j) * k + i]) * x[size_t(m) * k + i];
      y[size_t(m) * n + j] = float(s);
    }
  }
}

void GemvResidual(const float* w, const float* x, int n, int k, float* h, const float* next_w,
                  float* g) {
  std::vector<float> y(static_cast<size_t>(n));
  Gemv(w, x, 1, n, k, y.data());
  for (int j = 0; j < n; ++j) {
    h[j] += y[size_t(j)];
    g[j] = RoundBf16(h[j] * next_w[j]);
  }
}

double RowRmsInv(const float* h, int dim, float eps) {
  double ss = 0.0;
  for (int i = 0; i < dim; ++i) ss += double(h[i]) * h[i];
  return 1.0 / std::sqrt(ss / dim + double(eps));
}

int32_t Argmax(const float* row, int n) {
  int32_t best = -1;
  for (int j = 0; j < n; ++j) {
    if (std::isnan(row[j])) continue;
    if (best < 0 || row[j] > row[best]) best = j;
  }
  return best < 0 ? 0 : best;
}

void SummarizePages(const float* k, int64_t pages, int hkv, int d, float* summary) {
  for (int64_t p = 0; p < pages * hkv; ++p) {
    const float* kp = k + size_t(p) * 16 * d;
    float* s = summary + size_t(p) * 2 * d;
    for (int i = 0; i < d; ++i) {
      float lo = kp[i], hi = kp[i];
      for (int t = 1; t < 16; ++t) {
        lo = std::min(lo, kp[size_t(t) * d + i]);
        hi = std::max(hi, kp[size_t(t) * d + i]);
      }
      s[i] = lo;
      s[d + i] = hi;
    }
  }
}

}  // namespace resa::cuda::ref
