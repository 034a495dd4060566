// absl::string_view from std::string_view. Debian's Abseil is built with its own string_view
// type (ABSL_OPTION_USE_STD_STRING_VIEW 0), so std::string_view does not convert implicitly to
// absl::StrCat arguments or absl hash-map lookup keys; elsewhere this is the identity.
#pragma once

#include <string_view>

#include "absl/strings/string_view.h"

namespace resa {

inline absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

}  // namespace resa
