// Model weights dequantised to fp32 for the CPU backend, with the projections that read the same
// input fused (QKV; gate+up) so a decode step streams each layer's weights in three GEMVs.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/core/buffer.h"
#include "runtime/core/progress.h"
#include "runtime/model/model_config.h"
#include "runtime/model/weight_source.h"

namespace resa {

struct CpuLayerWeights {
  FloatBuffer input_norm;  // [hidden]
  FloatBuffer qkv;         // [q_dim + 2 kv_dim][hidden]: q rows, then k, then v
  FloatBuffer qkv_bias;    // [q_dim + 2 kv_dim] or empty
  FloatBuffer o;           // [hidden][q_dim]
  FloatBuffer post_norm;   // [hidden]
  FloatBuffer gate_up;     // [2 intermediate][hidden]: gate rows, then up
  FloatBuffer down;        // [hidden][intermediate]
};

struct CpuWeights {
  ModelConfig config;
  FloatBuffer embed;       // [vocab][hidden]
  FloatBuffer final_norm;  // [hidden]
  FloatBuffer lm_head;     // [vocab][hidden]; empty when tied to embed
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
