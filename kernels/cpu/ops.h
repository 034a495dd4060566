// Element-wise and per-row model ops on fp32 activations.
#pragma once

#include <cstdint>

namespace resa {

// out[r] = x[r] / rms(x[r]) * weight, rms = sqrt(mean(x^2) + eps); out may alias x.
void RmsNorm(const float* x, const float* weight, int rows, int dim, float eps, float* out);

// NeoX (half-split) rotary embedding in place on x [rows][num_heads][head_dim]: for i < d/2,
// (x_i, x_{i+d/2}) rotates by angle pos * theta^(-2i/d). positions[r] is row r's position.
void RopeNeox(float* x, int rows, int num_heads, int head_dim, const int32_t* positions,
              float theta);

// out[i] = silu(gate[i]) * up[i]
void SiluMul(const float* gate, const float* up, int64_t n, float* out);

// x[i] += y[i]
void AddInPlace(float* x, const float* y, int64_t n);

}  // namespace resa
