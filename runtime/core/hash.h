// Stable hashing: the same value in every process, build and run (unlike absl::Hash, which is
// salted per process). For identities that travel between processes or must be reproducible.
#pragma once

#include <cstdint>
#include <string_view>

namespace resa {

inline constexpr uint64_t kFnv1aOffset = 1469598103934665603ull;

// FNV-1a, 64 bit; pass the previous result as `h` to hash several pieces as one.
inline uint64_t Fnv1a64(std::string_view bytes, uint64_t h = kFnv1aOffset) {
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace resa
