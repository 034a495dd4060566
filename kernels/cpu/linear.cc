#include "kernels/cpu/linear.h"

#include <cblas.h>

#include <algorithm>
#include <cstddef>

namespace resa {

void LinearReference(const LinearShape& s, const float* x, const float* w, const float* bias,
                     float* y) {
  for (int r = 0; r < s.rows; ++r) {
    for (int o = 0; o < s.n_out; ++o) {
      double acc = bias != nullptr ? bias[o] : 0.0;
      for (int i = 0; i < s.n_in; ++i) {
        acc += double(x[size_t(r) * s.n_in + i]) * double(w[size_t(o) * s.n_in + i]);
      }
      y[size_t(r) * s.n_out + o] = float(acc);
    }
  }
}

namespace {

// Dot products of one weight row with R activation rows; R is a compile-time constant so the
// accumulators live in registers.
template <int R>
inline void RowDots(const float* __restrict w, const float* __restrict x, int n_in, float* out) {
  float acc[R] = {};
  for (int r = 0; r < R; ++r) {
    const float* xr = x + size_t(r) * n_in;
    float a = 0.0f;
#pragma omp simd reduction(+ : a)
    for (int i = 0; i < n_in; ++i) a += w[i] * xr[i];
    acc[r] = a;
  }
  for (int r = 0; r < R; ++r) out[r] = acc[r];
}

// One activation row, four weight rows per pass: four independent reductions keep the FMA units
// busy while W streams from memory.
inline void FourRowDots(const float* __restrict w, size_t stride, const float* __restrict x,
                        int n_in, float* out) {
  float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  const float* w0 = w;
  const float* w1 = w + stride;
  const float* w2 = w + 2 * stride;
  const float* w3 = w + 3 * stride;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
  for (int i = 0; i < n_in; ++i) {
    a0 += w0[i] * x[i];
    a1 += w1[i] * x[i];
    a2 += w2[i] * x[i];
    a3 += w3[i] * x[i];
  }
  out[0] = a0;
  out[1] = a1;
  out[2] = a2;
  out[3] = a3;
}

template <int R>
void GemvRows(const LinearShape& s, const float* x, const float* w, const float* bias, float* y) {
  const int n_out = s.n_out;
#pragma omp parallel for schedule(static)
  for (int o = 0; o < n_out; ++o) {
    float dots[R];
    RowDots<R>(w + size_t(o) * s.n_in, x, s.n_in, dots);
    const float b = bias != nullptr ? bias[o] : 0.0f;
    for (int r = 0; r < R; ++r) y[size_t(r) * n_out + o] = dots[r] + b;
  }
}

void GemvOne(const LinearShape& s, const float* x, const float* w, const float* bias, float* y) {
  const int quads = s.n_out / 4;
#pragma omp parallel for schedule(static)
  for (int qd = 0; qd < quads; ++qd) {
    const int o = qd * 4;
    FourRowDots(w + size_t(o) * s.n_in, size_t(s.n_in), x, s.n_in, y + o);
    if (bias != nullptr) {
      for (int k = 0; k < 4; ++k) y[o + k] += bias[o + k];
    }
  }
  for (int o = quads * 4; o < s.n_out; ++o) {
    float d;
    RowDots<1>(w + size_t(o) * s.n_in, x, s.n_in, &d);
    y[o] = d + (bias != nullptr ? bias[o] : 0.0f);
  }
}

}  // namespace

void LinearGemv(const LinearShape& s, const float* x, const float* w, const float* bias, float* y) {
  switch (s.rows) {
    case 1: GemvOne(s, x, w, bias, y); return;
    case 2: GemvRows<2>(s, x, w, bias, y); return;
    case 3: GemvRows<3>(s, x, w, bias, y); return;
    case 4: GemvRows<4>(s, x, w, bias, y); return;
    case 5: GemvRows<5>(s, x, w, bias, y); return;
    case 6: GemvRows<6>(s, x, w, bias, y); return;
    case 7: GemvRows<7>(s, x, w, bias, y); return;
    case 8: GemvRows<8>(s, x, w, bias, y); return;
    default: break;
  }
  // Callers only pass 1..kGemvMaxRows; larger batches are split rather than dropped.
  for (int r0 = 0; r0 < s.rows; r0 += kGemvMaxRows) {
    LinearShape part = s;
    part.rows = std::min(kGemvMaxRows, s.rows - r0);
    LinearGemv(part, x + size_t(r0) * s.n_in, w, bias, y + size_t(r0) * s.n_out);
  }
}

void Linear(const LinearShape& s, const float* x, const float* w, const float* bias, float* y) {
  if (s.rows <= 0) return;
  if (s.rows <= kGemvMaxRows) {
    LinearGemv(s, x, w, bias, y);
    return;
  }
  if (bias != nullptr) {
    for (int r = 0; r < s.rows; ++r) std::copy(bias, bias + s.n_out, y + size_t(r) * s.n_out);
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s.rows, s.n_out, s.n_in, 1.0f, x, s.n_in,
              w, s.n_in, bias != nullptr ? 1.0f : 0.0f, y, s.n_out);
}

}  // namespace resa
