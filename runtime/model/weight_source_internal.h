// Pieces shared by the GGUF and safetensors weight sources (not part of the public API).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "runtime/model/gguf.h"
#include "runtime/model/weight_source.h"

namespace resa::internal {

absl::StatusOr<std::unique_ptr<WeightSource>> OpenGgufWeightSource(const std::string& path);
absl::StatusOr<std::unique_ptr<WeightSource>> OpenSafetensorsWeightSource(const std::string& dir);
// A GGUF weight source over an already parsed file (fuzzers, in-memory tests).
absl::StatusOr<std::unique_ptr<WeightSource>> GgufWeightSourceFromFile(
    std::unique_ptr<gguf::GgufFile> file);

struct RequiredWeight {
  std::string name;            // canonical
  std::vector<int64_t> shape;  // row-major
};

// Every weight the architecture of `config` needs, with its expected shape.
std::vector<RequiredWeight> RequiredWeights(const ModelConfig& config);

// Checks presence, shape and readability of every required weight of `src`. `stored_name`
// gives the name in the file for messages; `readable` returns an error for a dtype the reader
// cannot convert to fp32.
absl::Status CheckRequiredWeights(const WeightSource& src,
                                  absl::FunctionRef<std::string(std::string_view)> stored_name,
                                  absl::FunctionRef<absl::Status(const WeightInfo&)> readable);

// Validates [row_begin, row_end) against a weight of `rows` rows; errors name the weight.
absl::Status CheckRowRange(const WeightSource& src, const WeightInfo& w, int64_t row_begin,
                           int64_t row_end, const float* out);

std::string ShapeString(const std::vector<int64_t>& shape);

}  // namespace resa::internal
