// Shared pieces of resa-bench: the memory ceilings measured in the same run as the benchmarks.
#pragma once

#include <cstdint>

namespace resa {

struct MemoryCeiling {
  double copy_gbps = 0.0;  // memcpy, read + write bytes counted, all threads
  double read_gbps = 0.0;  // streaming read (sum), all threads
};

// Measures with a buffer of `bytes` per direction (well past the last-level cache), best of
// `repeats`, using the OpenMP threads configured.
MemoryCeiling MeasureMemoryCeiling(uint64_t bytes = 512ull << 20, int repeats = 5);

}  // namespace resa
