// GGML tensor element types (as numbered in GGUF files) and their dequantisers to fp32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"

namespace resa {

enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kBF16 = 30,
};

struct GgmlTypeTraits {
  std::string_view name;
  int64_t block_elems = 0;  // elements per block (1 for plain floats)
  size_t block_bytes = 0;   // bytes per block
  bool dequantizable = false;
};

// Traits of a type id read from a file; InvalidArgument for ids this build does not know.
absl::StatusOr<GgmlTypeTraits> TraitsOf(uint32_t type_id);

// Bytes of `n` consecutive elements; InvalidArgument if n is not a whole number of blocks or the
// size overflows.
absl::StatusOr<uint64_t> RowBytes(GgmlType type, int64_t n);

// Dequantises `n` elements (a whole number of blocks) starting at `src` into `dst`.
absl::Status DequantizeRow(GgmlType type, const uint8_t* src, float* dst, int64_t n);

// IEEE half and bfloat16 conversions used by loaders and kernels.
float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);
float Bf16ToFloat(uint16_t b);
uint16_t FloatToBf16(float f);  // round to nearest even

}  // namespace resa
