// Model weights dequantised to fp32 for the CPU backend, with the projections that read the same
// input fused (QKV; gate+up) so a decode step streams each layer's weights in three GEMVs.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/core/progress.h"
#include "runtime/model/model_config.h"
#include "runtime/model/weight_source.h"

namespace resa {

struct CpuLayerWeights {
  std::vector<float> input_norm;  // [hidden]
  std::vector<float> qkv;         // [q_dim + 2 kv_dim][hidden]: q rows, then k, then v
  std::vector<float> qkv_bias;    // [q_dim + 2 kv_dim] or empty
  std::vector<float> o;           // [hidden][q_dim]
  std::vector<float> post_norm;   // [hidden]
  std::vector<float> gate_up;     // [2 intermediate][hidden]: gate rows, then up
  std::vector<float> down;        // [hidden][intermediate]
};

struct CpuWeights {
  ModelConfig config;
  std::vector<float> embed;       // [vocab][hidden]
  std::vector<float> final_norm;  // [hidden]
  std::vector<float> lm_head;     // [vocab][hidden]; empty when tied to embed
  std::vector<CpuLayerWeights> layers;

  const float* lm_head_data() const { return lm_head.empty() ? embed.data() : lm_head.data(); }
  // Bytes of weights one decode step reads (every layer, final norm and lm_head; the embedding
  // row is negligible and excluded).
  uint64_t DecodeBytes() const;
  uint64_t TotalBytes() const;
};

// Reads and dequantises every weight (in parallel over tensors); `progress` sees bytes of the
// file consumed. Errors name the weight.
absl::StatusOr<std::unique_ptr<CpuWeights>> LoadCpuWeights(const WeightSource& source,
                                                           const ProgressFn& progress = {});

}  // namespace resa
