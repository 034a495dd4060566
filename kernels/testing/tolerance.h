// The one tolerance policy for kernel tests: |x - ref| <= atol + rtol * |ref|, per dtype.
// A failure reports the worst error and the first mismatches with their indices.
#pragma once

#include <cmath>
#include <cstddef>
#include <sstream>
#include <string>

#include "gtest/gtest.h"

namespace resa::testing {

struct Tolerance {
  double atol;
  double rtol;
};

// fp32 kernels vs a double-precision reference: reordering of fp32 sums only.
inline constexpr Tolerance kF32{1e-5, 1e-4};
// bf16 storage (GPU KV and weights), fp32 accumulation.
inline constexpr Tolerance kBF16{2e-2, 2e-2};

template <typename A, typename B>
::testing::AssertionResult AllClose(const A* got, const B* ref, size_t n, Tolerance tol) {
  size_t bad = 0;
  size_t worst = 0;
  double worst_err = -1.0;
  std::ostringstream first;
  for (size_t i = 0; i < n; ++i) {
    const double g = double(got[i]), r = double(ref[i]);
    const double err = std::fabs(g - r);
    const bool same_inf = std::isinf(g) && std::isinf(r) && (g > 0) == (r > 0);
    const bool ok = same_inf || (!std::isnan(g) && err <= tol.atol + tol.rtol * std::fabs(r));
    if (!ok) {
      if (bad < 8) first << "  [" << i << "] got " << g << " want " << r << "\n";
      ++bad;
    }
    if (!same_inf && (std::isnan(err) || err > worst_err)) {
      worst_err = std::isnan(err) ? INFINITY : err;
      worst = i;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << bad << " of " << n << " values out of tolerance (atol " << tol.atol << ", rtol "
         << tol.rtol << "); worst |err| " << worst_err << " at [" << worst << "]\n"
         << first.str();
}

}  // namespace resa::testing
