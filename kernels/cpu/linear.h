// y = x W^T for fp32 row-major W [n_out][n_in] (Hugging Face layout) and x [rows][n_in].
#pragma once

#include <cstdint>

namespace resa {

struct LinearShape {
  int rows = 0;   // tokens in the batch
  int n_in = 0;
  int n_out = 0;
};

// Plain loops in double: the oracle.
void LinearReference(const LinearShape& s, const float* x, const float* w, const float* bias,
                     float* y);

// Dispatches on rows: up to kGemvMaxRows rows stream W once through a vectorised multi-row GEMV
// (decode: bandwidth bound, OpenMP over output rows); more rows use OpenBLAS SGEMM (prefill and
// rectification chunks: compute bound). bias may be null.
inline constexpr int kGemvMaxRows = 8;
void Linear(const LinearShape& s, const float* x, const float* w, const float* bias, float* y);

// The GEMV path alone (exposed for tests and benchmarks); rows <= kGemvMaxRows.
void LinearGemv(const LinearShape& s, const float* x, const float* w, const float* bias, float* y);

}  // namespace resa
