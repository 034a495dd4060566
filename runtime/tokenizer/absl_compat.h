// Debian 12's Abseil (20220623) keeps its own absl::string_view, distinct from std::string_view:
// absl::StrCat and heterogeneous lookup in absl containers accept only the former. Code here
// uses std::string_view and converts at those calls.
#pragma once

#include <string_view>

#include "absl/strings/string_view.h"

namespace resa::tok {

inline absl::string_view AbslView(std::string_view s) { return {s.data(), s.size()}; }

}  // namespace resa::tok
