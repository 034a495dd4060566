// A model on disk, whatever its format: its config, its tokenizer description, and its weights
// under canonical (Hugging Face) names, readable as fp32 rows straight from the mapping.
//
// Canonical names: model.embed_tokens.weight, model.norm.weight, lm_head.weight (absent when
// tied), model.layers.{i}.{input_layernorm,post_attention_layernorm}.weight,
// model.layers.{i}.self_attn.{q,k,v,o}_proj.weight, model.layers.{i}.self_attn.{q,k,v}_proj.bias,
// model.layers.{i}.mlp.{gate,up,down}_proj.weight. 2-D weights are [out, in] row-major.
// Q/K rows are presented in Hugging Face (NeoX half-split RoPE) order whatever the file stores:
// GGUF llama files permute them for interleaved RoPE and the reader undoes that.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/core/progress.h"
#include "runtime/model/model_config.h"

namespace resa {

namespace gguf {
class GgufFile;
}

struct WeightInfo {
  std::string name;               // canonical name
  std::vector<int64_t> shape;     // row-major, outermost first ([out, in] for 2-D)
  std::string dtype;              // as stored ("Q4_1", "BF16", ...), for reports
  uint64_t stored_bytes = 0;      // bytes in the file
  int64_t rows() const;           // shape[0] for 2-D, 1 for 1-D
  int64_t cols() const;           // innermost dimension
};

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual const ModelConfig& config() const = 0;
  virtual std::string format() const = 0;  // "gguf" or "safetensors"
  virtual std::string path() const = 0;
  virtual std::vector<WeightInfo> weights() const = 0;
  virtual const WeightInfo* Find(std::string_view canonical_name) const = 0;
  // Dequantises rows [row_begin, row_end) of a weight into `out` (row-major fp32,
  // (row_end - row_begin) * cols floats). A 1-D weight has a single row. Errors name the weight.
  virtual absl::Status ReadRowsF32(std::string_view canonical_name, int64_t row_begin,
                                   int64_t row_end, float* out) const = 0;
  // The GGUF file when the model came from one (tokenizer and chat template live in its
  // metadata), else nullptr.
  virtual const gguf::GgufFile* gguf() const { return nullptr; }
  // Directory of an HF model (tokenizer.json lives there), else empty.
  virtual std::string hf_dir() const { return {}; }
};

// Opens a GGUF file or a Hugging Face directory (config.json + *.safetensors, single or sharded
// with model.safetensors.index.json). Validates the config and that every weight the
// architecture needs is present with the right shape.
absl::StatusOr<std::unique_ptr<WeightSource>> OpenWeightSource(const std::string& path);

}  // namespace resa
