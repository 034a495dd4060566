// Error plumbing shared by every module: absl::Status across module boundaries, never exit().
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

// Returns the status of `expr` from the enclosing function when it is not OK.
#define RESA_RETURN_IF_ERROR(expr)                 \
  do {                                             \
    if (::absl::Status _st = (expr); !_st.ok()) {  \
      return _st;                                  \
    }                                              \
  } while (false)

#define RESA_STATUS_CONCAT_INNER(a, b) a##b
#define RESA_STATUS_CONCAT(a, b) RESA_STATUS_CONCAT_INNER(a, b)

// Evaluates `rexpr` (a StatusOr), returns its error, or moves its value into `lhs`.
#define RESA_ASSIGN_OR_RETURN(lhs, rexpr) \
  RESA_ASSIGN_OR_RETURN_IMPL(RESA_STATUS_CONCAT(_statusor_, __LINE__), lhs, rexpr)
#define RESA_ASSIGN_OR_RETURN_IMPL(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                               \
  if (!tmp.ok()) return std::move(tmp).status();    \
  lhs = std::move(tmp).value()

namespace resa {

// Debian 12's abseil (20220623) has its own absl::string_view, distinct from std::string_view:
// absl::StrCat and heterogeneous lookups in absl containers take only the former.
inline absl::string_view AsAbsl(std::string_view s) { return {s.data(), s.size()}; }

// Prefixes a status message with context ("loading x.gguf: ...") and keeps its code.
inline absl::Status Annotate(const absl::Status& st, std::string_view context) {
  if (st.ok()) return st;
  return absl::Status(st.code(), absl::StrCat(AsAbsl(context), ": ", st.message()));
}

}  // namespace resa
