#include "runtime/engine/synthetic_model.h"

#include <cmath>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/core/hash.h"
#include "runtime/core/status.h"

namespace resa {
namespace {

inline uint64_t SplitMix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Uniform in [-1, 1).
inline float UnitNoise(uint64_t key) {
  return float(double(SplitMix(key) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

class SyntheticSource : public WeightSource {
 public:
  SyntheticSource(const ModelConfig& c, uint64_t seed) : config_(c), seed_(seed) {
    const int64_t hid = c.hidden_size, qd = c.q_dim(), kvd = c.kv_dim(),
                  inter = c.intermediate_size;
    Add("model.embed_tokens.weight", {c.vocab_size, hid});
    Add("model.norm.weight", {hid});
    if (!c.tie_word_embeddings) Add("lm_head.weight", {c.vocab_size, hid});
    for (int i = 0; i < c.num_layers; ++i) {
      const std::string p = absl::StrCat("model.layers.", i, ".");
      Add(p + "input_layernorm.weight", {hid});
      Add(p + "post_attention_layernorm.weight", {hid});
      Add(p + "self_attn.q_proj.weight", {qd, hid});
      Add(p + "self_attn.k_proj.weight", {kvd, hid});
      Add(p + "self_attn.v_proj.weight", {kvd, hid});
      if (c.attention_bias) {
        Add(p + "self_attn.q_proj.bias", {qd});
        Add(p + "self_attn.k_proj.bias", {kvd});
        Add(p + "self_attn.v_proj.bias", {kvd});
      }
      Add(p + "self_attn.o_proj.weight", {hid, qd});
      Add(p + "mlp.gate_proj.weight", {inter, hid});
      Add(p + "mlp.up_proj.weight", {inter, hid});
      Add(p + "mlp.down_proj.weight", {hid, inter});
    }
  }

  const ModelConfig& config() const override { return config_; }
  std::string format() const override { return "synthetic"; }
  std::string path() const override { return absl::StrCat("synthetic:", config_.model_name); }
  std::vector<WeightInfo> weights() const override { return infos_; }
  const WeightInfo* Find(std::string_view name) const override {
    auto it = index_.find(AsAbsl(name));
    return it == index_.end() ? nullptr : &infos_[it->second];
  }

  absl::Status ReadRowsF32(std::string_view name, int64_t row_begin, int64_t row_end,
                           float* out) const override {
    const WeightInfo* info = Find(name);
    if (info == nullptr) return absl::NotFoundError(absl::StrCat("no weight ", AsAbsl(name)));
    if (row_begin < 0 || row_end > info->rows() || row_begin > row_end) {
      return absl::OutOfRangeError(absl::StrCat(AsAbsl(name), ": rows [", row_begin, ", ", row_end,
                                                ") outside [0, ", info->rows(), ")"));
    }
    // A stable hash: every process (MPI rank, run) gets the same weights.
    const uint64_t key = SplitMix(seed_ ^ Fnv1a64(name));
    const int64_t cols = info->cols();
    const bool is_norm = info->shape.size() == 1 && name.find("bias") == std::string_view::npos;
    // Scale like a trained model: unit-variance activations through each projection.
    const float scale = info->shape.size() == 2 ? float(std::sqrt(3.0 / double(cols))) : 0.1f;
    for (int64_t r = row_begin; r < row_end; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const float u = UnitNoise(key + uint64_t(r * cols + c));
        out[(r - row_begin) * cols + c] = is_norm ? 1.0f + 0.1f * u : scale * u;
      }
    }
    return absl::OkStatus();
  }

 private:
  void Add(std::string name, std::vector<int64_t> shape) {
    WeightInfo w;
    w.name = std::move(name);
    w.shape = std::move(shape);
    w.dtype = "F32";
    w.stored_bytes = uint64_t(w.rows() * w.cols()) * 4;
    index_[w.name] = infos_.size();
    infos_.push_back(std::move(w));
  }

  ModelConfig config_;
  uint64_t seed_;
  std::vector<WeightInfo> infos_;
  absl::flat_hash_map<std::string, size_t> index_;
};

ModelConfig Make(std::string name, Arch arch, int vocab, int hidden, int inter, int layers,
                 int heads, int kv_heads, float theta, bool tied) {
  ModelConfig c;
  c.arch = arch;
  c.arch_name = arch == Arch::kQwen2 ? "qwen2" : "llama";
  c.model_name = std::move(name);
  c.vocab_size = vocab;
  c.hidden_size = hidden;
  c.intermediate_size = inter;
  c.num_layers = layers;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.head_dim = hidden / heads;
  c.rms_norm_eps = 1e-6f;
  c.rope_theta = theta;
  c.max_position_embeddings = 131072;
  c.tie_word_embeddings = tied;
  c.attention_bias = arch == Arch::kQwen2;
  return c;
}

}  // namespace

std::vector<std::string> SyntheticShapes() {
  return {"tiny", "smollm2-135m", "r1-qwen-1.5b", "r1-qwen-7b"};
}

absl::StatusOr<ModelConfig> SyntheticConfig(const std::string& shape) {
  if (shape == "tiny") return Make("tiny", Arch::kQwen2, 512, 192, 256, 2, 6, 2, 10000.0f, false);
  if (shape == "smollm2-135m") {
    ModelConfig c = Make("smollm2-135m", Arch::kLlama, 49152, 576, 1536, 30, 9, 3, 100000.0f, true);
    c.rms_norm_eps = 1e-5f;
    return c;
  }
  if (shape == "r1-qwen-1.5b") {
    return Make("r1-qwen-1.5b", Arch::kQwen2, 151936, 1536, 8960, 28, 12, 2, 10000.0f, false);
  }
  if (shape == "r1-qwen-7b") {
    return Make("r1-qwen-7b", Arch::kQwen2, 152064, 3584, 18944, 28, 28, 4, 10000.0f, false);
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown synthetic shape '", shape,
                                                 "'; known: ", absl::StrJoin(SyntheticShapes(), ", ")));
}

std::unique_ptr<WeightSource> MakeSyntheticWeights(const ModelConfig& config, uint64_t seed) {
  return std::make_unique<SyntheticSource>(config, seed);
}

}  // namespace resa
