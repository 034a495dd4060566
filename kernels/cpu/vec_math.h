// Branch-free float math that the compiler vectorises inside `omp simd` loops (glibc's expf is a
// scalar call there unless -ffast-math, which the project does not use).
#pragma once

#include <bit>
#include <cstdint>

namespace resa {

// exp(x) for finite x, |relative error| < 3e-7 against std::exp over [-87, 88]; inputs below
// -87.3 return ~1e-38 (attention only uses exp(x) for x <= 0, where that is negligible next to
// the running sum of at least one exp(0) = 1).
inline float FastExp(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
  // x = n ln2 + r with n = round(x / ln2), |r| <= ln2 / 2; ln2 split in two (Cody-Waite) so
  // r is exact to float precision.
  const float t = x * 1.44269504088896341f;
  const float fi = static_cast<float>(static_cast<int32_t>(t + (t >= 0.0f ? 0.5f : -0.5f)));
  const float r = (x - fi * 0.693359375f) - fi * -2.12194440e-4f;
  // exp(r): degree-6 least-squares fit in relative error on [-ln2/2, ln2/2] (max 1e-7).
  float p = 1.38294208e-3f;
  p = p * r + 8.37477110e-3f;
  p = p * r + 4.16683592e-2f;
  p = p * r + 1.66664213e-1f;
  p = p * r + 4.99999911e-1f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t e = static_cast<int32_t>(fi) << 23;
  return std::bit_cast<float>(std::bit_cast<int32_t>(p) + e);
}

}  // namespace resa
