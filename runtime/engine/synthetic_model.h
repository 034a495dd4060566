// Random-weight models with exact architecture shapes, for tests and benchmarks at full size
// without downloading weights. Weights are a pure function of (seed, name, index): any row range
// reads back the same values, in any order, from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/model/model_config.h"
#include "runtime/model/weight_source.h"

namespace resa {

// Named shapes: "tiny" (2 layers, for unit tests), "smollm2-135m", "r1-qwen-1.5b" (the shapes
// of DeepSeek-R1-Distill-Qwen-1.5B), "r1-qwen-7b".
absl::StatusOr<ModelConfig> SyntheticConfig(const std::string& shape);
std::vector<std::string> SyntheticShapes();

std::unique_ptr<WeightSource> MakeSyntheticWeights(const ModelConfig& config, uint64_t seed);

}  // namespace resa
