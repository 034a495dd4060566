// Model weights dequantised to fp32 for the CPU backend, with the projections that read the same
// input fused (QKV; gate+up) so a decode step streams each layer's weights in three GEMVs.
//
// Under tensor parallelism a rank holds only its TpShard (tp_shard.h): the q/k/v rows of its
// heads and the gate/up rows of its intermediate range (column-parallel), the matching columns of
// o_proj and down_proj (row-parallel: the forward all-reduces their outputs), and its lm_head
// rows (vocab-parallel: the forward all-gathers the logits). Norms and the embedding table are
// replicated. Shapes below are the local ones; with the full shard they are the model's.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/core/buffer.h"
#include "runtime/core/progress.h"
#include "runtime/engine/tp_shard.h"
#include "runtime/model/model_config.h"
#include "runtime/model/weight_source.h"

namespace resa {

struct CpuLayerWeights {
  FloatBuffer input_norm;  // [hidden]
  FloatBuffer qkv;         // [lq + 2 lkv][hidden]: q rows, then k, then v (lq = local heads x
                           // head_dim, lkv = local KV heads x head_dim)
  FloatBuffer qkv_bias;    // [lq + 2 lkv] or empty
  FloatBuffer o;           // [hidden][lq]: the local heads' columns
  FloatBuffer post_norm;   // [hidden]
  FloatBuffer gate_up;     // [2 li][hidden]: gate rows, then up (li = local intermediate)
  FloatBuffer down;        // [hidden][li]
};

struct CpuWeights {
  ModelConfig config;      // the whole model's
  TpShard shard;           // what this rank holds
  FloatBuffer embed;       // [vocab][hidden] (replicated)
  FloatBuffer final_norm;  // [hidden]
  FloatBuffer lm_head;     // [shard.vocab_size][hidden]; empty when tied to embed
  std::vector<CpuLayerWeights> layers;

  // The local lm_head rows (vocabulary [shard.vocab_begin, + shard.vocab_size)).
  const float* lm_head_data() const {
    return lm_head.empty() ? embed.data() + size_t(shard.vocab_begin) * config.hidden_size
                           : lm_head.data();
  }
  // Bytes of weights one decode step reads (every layer, final norm and lm_head; the embedding
  // row is negligible and excluded).
  uint64_t DecodeBytes() const;
  uint64_t TotalBytes() const;
};

// Reads and dequantises every weight (in parallel over tensors); `progress` sees bytes of the
// file consumed. Errors name the weight.
absl::StatusOr<std::unique_ptr<CpuWeights>> LoadCpuWeights(const WeightSource& source,
                                                           const ProgressFn& progress = {});
// Loads only `shard` (from MakeTpShard): each rank dequantises its row ranges; for the column
// slices of o_proj and down_proj it dequantises row chunks and keeps the slice.
absl::StatusOr<std::unique_ptr<CpuWeights>> LoadCpuWeights(const WeightSource& source,
                                                           const TpShard& shard,
                                                           const ProgressFn& progress = {});

}  // namespace resa
