// `resa-make-model`: writes a random-weight model with the exact shapes of a real one as a
// Hugging Face directory (config.json, safetensors, tokenizer.json), so that full-size speed can
// be measured on any machine without downloading weights.
//
// The weights are those of the "synthetic:<shape>" models (runtime/engine/synthetic_model.h):
// uniform with std 1/sqrt(fan_in) for projections, norms near 1, small biases, a pure function
// of (seed, tensor name, index). With --dtype f32 and seed 1 the directory holds exactly the
// weights `--model synthetic:<shape>` computes; bf16 / f16 are those values rounded to nearest.
//
// The directory is assembled under "<out>.partial" (every file fsynced) and renamed onto <out>
// only when complete, so an interrupted run never leaves a directory that looks like a model.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/model/model_config.h"
#include "runtime/model/safetensors.h"
#include "runtime/model/weight_source.h"

namespace resa {

struct MakeModelOptions {
  std::string shape;           // a name from MakeModelShapes()
  std::string out_dir;         // must not exist, or be empty, unless `force`
  std::string dtype = "bf16";  // bf16, f16 or f32
  uint64_t seed = 1;           // 1 = the weights of `--model synthetic:<shape>`
  double shard_gb = 4.0;       // split into model-0000i-of-0000N.safetensors above this
  bool force = false;          // replace an existing non-empty <out>
  std::string tokenizer_from;  // a tokenizer.json to copy instead of the generated one
  bool progress = true;        // progress bar on stderr
};

// Accepted --shape names: the synthetic shapes plus the Hugging Face style aliases
// "r1-distill-qwen-1.5b" and "r1-distill-qwen-7b".
std::vector<std::string> MakeModelShapes();

// The config of a --shape name; InvalidArgument listing the known names otherwise.
absl::StatusOr<ModelConfig> MakeModelConfig(const std::string& shape);

// "bf16" / "f16" / "f32" -> safetensors dtype; InvalidArgument otherwise.
absl::StatusOr<safetensors::Dtype> ParseMakeModelDtype(const std::string& dtype);

// The weights of `source` in Hugging Face file order: embeddings, layers, final norm, lm_head.
std::vector<WeightInfo> PlanTensors(const WeightSource& source);

// Groups tensors (in order) into shards of at most `shard_bytes` each; a tensor larger than
// that gets a shard of its own. Returns the index of the first tensor of each shard.
std::vector<size_t> PlanShards(const std::vector<uint64_t>& tensor_bytes, uint64_t shard_bytes);

// config.json text: the keys the loader reads plus the usual Hugging Face ones.
std::string HfConfigJson(const ModelConfig& config, safetensors::Dtype dtype, int bos_id,
                         int eos_id);

// A byte-level BPE tokenizer.json with exactly `vocab_size` ids: the 256 bytes, merged pairs
// and triples of printable ASCII (every merge's parts are tokens, so it encodes any text), and
// the specials <|endoftext|>, <|im_start|>, <|im_end|> as the last three ids. vocab_size must
// be at least 259. Also the matching tokenizer_config.json (ChatML template, EOS).
struct GeneratedTokenizer {
  std::string tokenizer_json;
  std::string tokenizer_config_json;
  int eos_id = -1;
};
absl::StatusOr<GeneratedTokenizer> MakeTokenizerJson(int vocab_size);

// fp32 values -> `n` elements of `dtype` (F32, BF16 or F16; the halves round to nearest even)
// at `dst`, little-endian as safetensors stores them.
void EncodeF32(safetensors::Dtype dtype, const float* src, int64_t n, uint8_t* dst);

// Writes the model directory. Errors name the flag, the path or the disk that failed.
absl::Status MakeModel(const MakeModelOptions& options);

}  // namespace resa
