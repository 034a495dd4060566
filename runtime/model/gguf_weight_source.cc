// WeightSource over a GGUF file: llama.cpp tensor names mapped to canonical HF names, config
// from the {arch}.* metadata, Q/K rows of llama files un-permuted on read.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "runtime/core/status.h"
#include "runtime/model/gguf.h"
#include "runtime/model/weight_source_internal.h"

namespace resa::internal {
namespace {

struct NamePair {
  std::string_view gguf;
  std::string_view hf;
};
constexpr NamePair kGlobalNames[] = {
    {"token_embd.weight", "model.embed_tokens.weight"},
    {"output_norm.weight", "model.norm.weight"},
    {"output.weight", "lm_head.weight"},
};
constexpr NamePair kLayerNames[] = {
    // after "blk.N." / "model.layers.N."
    {"attn_norm.weight", "input_layernorm.weight"},
    {"ffn_norm.weight", "post_attention_layernorm.weight"},
    {"attn_q.weight", "self_attn.q_proj.weight"},
    {"attn_k.weight", "self_attn.k_proj.weight"},
    {"attn_v.weight", "self_attn.v_proj.weight"},
    {"attn_output.weight", "self_attn.o_proj.weight"},
    {"attn_q.bias", "self_attn.q_proj.bias"},
    {"attn_k.bias", "self_attn.k_proj.bias"},
    {"attn_v.bias", "self_attn.v_proj.bias"},
    {"attn_output.bias", "self_attn.o_proj.bias"},
    {"ffn_gate.weight", "mlp.gate_proj.weight"},
    {"ffn_up.weight", "mlp.up_proj.weight"},
    {"ffn_down.weight", "mlp.down_proj.weight"},
};

// Splits "<prefix>N.<rest>" into N and rest; false when `name` has another form.
bool SplitLayer(std::string_view name, std::string_view prefix, int64_t* layer,
                std::string_view* rest) {
  if (name.substr(0, prefix.size()) != prefix) return false;
  name.remove_prefix(prefix.size());
  const size_t dot = name.find('.');
  if (dot == std::string_view::npos || dot == 0 || dot > 9) return false;
  for (char c : name.substr(0, dot)) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
  }
  if (!absl::SimpleAtoi(AsAbsl(name.substr(0, dot)), layer)) return false;
  *rest = name.substr(dot + 1);
  return true;
}

// GGUF name -> canonical name; names with no canonical form are kept as they are.
std::string ToCanonical(std::string_view gguf_name) {
  for (const NamePair& p : kGlobalNames) {
    if (p.gguf == gguf_name) return std::string(p.hf);
  }
  int64_t layer;
  std::string_view rest;
  if (SplitLayer(gguf_name, "blk.", &layer, &rest)) {
    for (const NamePair& p : kLayerNames) {
      if (p.gguf == rest) return absl::StrCat("model.layers.", layer, ".", AsAbsl(p.hf));
    }
  }
  return std::string(gguf_name);
}

std::string ToGguf(std::string_view canonical) {
  for (const NamePair& p : kGlobalNames) {
    if (p.hf == canonical) return std::string(p.gguf);
  }
  int64_t layer;
  std::string_view rest;
  if (SplitLayer(canonical, "model.layers.", &layer, &rest)) {
    for (const NamePair& p : kLayerNames) {
      if (p.hf == rest) return absl::StrCat("blk.", layer, ".", AsAbsl(p.gguf));
    }
  }
  return std::string(canonical);
}

// Row of a llama GGUF Q/K weight holding HF row `r`. The converter stores, within each head of
// `hd` rows, HF row i (pair j = i mod hd/2, element e = i div hd/2) at row 2j + e (interleaved
// RoPE order); HF order is half-split.
inline int64_t PermutedRow(int64_t r, int64_t hd) {
  const int64_t head = r / hd, i = r % hd, half = hd / 2;
  return head * hd + (i < half ? 2 * i : 2 * (i - half) + 1);
}

class GgufWeightSource : public WeightSource {
 public:
  static absl::StatusOr<std::unique_ptr<WeightSource>> Open(std::unique_ptr<gguf::GgufFile> file);

  const ModelConfig& config() const override { return config_; }
  std::string format() const override { return "gguf"; }
  std::string path() const override { return file_->path(); }
  std::vector<WeightInfo> weights() const override {
    std::vector<WeightInfo> out;
    out.reserve(entries_.size());
    for (const Entry& e : entries_) out.push_back(e.info);
    return out;
  }
  const WeightInfo* Find(std::string_view name) const override {
    auto it = index_.find(AsAbsl(name));
    return it == index_.end() ? nullptr : &entries_[it->second].info;
  }
  absl::Status ReadRowsF32(std::string_view name, int64_t row_begin, int64_t row_end,
                           float* out) const override;
  const gguf::GgufFile* gguf() const override { return file_.get(); }

 private:
  struct Entry {
    WeightInfo info;
    const gguf::TensorInfo* tensor = nullptr;
    int64_t permute_head_dim = 0;  // > 0: rows (2-D) or elements (1-D) are llama-permuted
  };

  absl::Status ReadConfig();

  std::unique_ptr<gguf::GgufFile> file_;
  ModelConfig config_;
  std::vector<Entry> entries_;
  absl::flat_hash_map<std::string, size_t> index_;
};

absl::Status GgufWeightSource::ReadConfig() {
  const gguf::GgufFile& f = *file_;
  RESA_ASSIGN_OR_RETURN(config_.arch_name, f.GetString("general.architecture"));
  if (config_.arch_name == "llama") {
    config_.arch = Arch::kLlama;
  } else if (config_.arch_name == "qwen2") {
    config_.arch = Arch::kQwen2;
  } else {
    return absl::UnimplementedError(
        absl::StrCat(f.path(), ": unsupported architecture '", config_.arch_name,
                     "' (general.architecture); supported: llama, qwen2"));
  }
  const std::string& a = config_.arch_name;
  // Integer keys must fit an int; range checks proper are ModelConfig::Validate's.
  auto get_int = [&](absl::string_view suffix, int* out) -> absl::Status {
    const std::string key = absl::StrCat(a, ".", suffix);
    RESA_ASSIGN_OR_RETURN(int64_t v, f.GetInt(key));
    if (v < 0 || v > std::numeric_limits<int>::max()) {
      return absl::InvalidArgumentError(
          absl::StrCat(f.path(), ": GGUF metadata '", key, "' = ", v, " is out of range"));
    }
    *out = static_cast<int>(v);
    return absl::OkStatus();
  };
  auto get_float = [&](absl::string_view suffix, float* out) -> absl::Status {
    RESA_ASSIGN_OR_RETURN(double v, f.GetFloat(absl::StrCat(a, ".", suffix)));
    *out = static_cast<float>(v);
    return absl::OkStatus();
  };
  auto has = [&](absl::string_view suffix) { return f.Find(absl::StrCat(a, ".", suffix)); };

  if (absl::StatusOr<std::string> name = f.GetString("general.name"); name.ok()) {
    config_.model_name = *name;
  }
  RESA_RETURN_IF_ERROR(get_int("block_count", &config_.num_layers));
  RESA_RETURN_IF_ERROR(get_int("embedding_length", &config_.hidden_size));
  RESA_RETURN_IF_ERROR(get_int("feed_forward_length", &config_.intermediate_size));
  RESA_RETURN_IF_ERROR(get_int("attention.head_count", &config_.num_heads));
  config_.num_kv_heads = config_.num_heads;
  if (has("attention.head_count_kv")) {
    RESA_RETURN_IF_ERROR(get_int("attention.head_count_kv", &config_.num_kv_heads));
  }
  RESA_RETURN_IF_ERROR(get_int("context_length", &config_.max_position_embeddings));
  RESA_RETURN_IF_ERROR(get_float("attention.layer_norm_rms_epsilon", &config_.rms_norm_eps));
  config_.rope_theta = 10000.0f;
  if (has("rope.freq_base")) RESA_RETURN_IF_ERROR(get_float("rope.freq_base", &config_.rope_theta));
  // Scaled RoPE changes the rotation angles; refuse it rather than decode wrongly.
  if (has("rope.scaling.type")) {
    auto type = f.GetString(absl::StrCat(a, ".rope.scaling.type"));
    if (!type.ok()) return type.status();
    if (*type != "none") {
      return absl::UnimplementedError(absl::StrCat(f.path(), ": ", a, ".rope.scaling.type = '",
                                                   *type, "' is not supported (plain RoPE only)"));
    }
  }

  if (has("attention.key_length")) {
    RESA_RETURN_IF_ERROR(get_int("attention.key_length", &config_.head_dim));
  } else {
    if (config_.num_heads <= 0 || config_.hidden_size % config_.num_heads != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(f.path(), ": ", a, ".embedding_length = ", config_.hidden_size,
                       " is not a multiple of ", a, ".attention.head_count = ", config_.num_heads,
                       " and there is no ", a, ".attention.key_length"));
    }
    config_.head_dim = config_.hidden_size / config_.num_heads;
  }
  if (has("attention.value_length")) {
    int value_length = 0;
    RESA_RETURN_IF_ERROR(get_int("attention.value_length", &value_length));
    if (value_length != config_.head_dim) {
      return absl::UnimplementedError(absl::StrCat(f.path(), ": ", a,
                                                   ".attention.value_length = ", value_length,
                                                   " differs from the key "
                                                   "length ",
                                                   config_.head_dim, "; unsupported"));
    }
  }

  const gguf::TensorInfo* embd = f.FindTensor("token_embd.weight");
  if (has("vocab_size")) {
    RESA_RETURN_IF_ERROR(get_int("vocab_size", &config_.vocab_size));
  } else if (embd != nullptr && embd->ne.size() == 2 &&
             embd->ne[1] <= std::numeric_limits<int>::max()) {
    config_.vocab_size = static_cast<int>(embd->ne[1]);
  } else if (const gguf::Value* tokens = f.Find("tokenizer.ggml.tokens");
             tokens != nullptr && tokens->type == gguf::ValueType::kArray &&
             tokens->array.size() <= static_cast<size_t>(std::numeric_limits<int>::max())) {
    config_.vocab_size = static_cast<int>(tokens->array.size());
  }
  config_.attention_bias = f.FindTensor("blk.0.attn_q.bias") != nullptr;
  config_.tie_word_embeddings = f.FindTensor("output.weight") == nullptr;
  return config_.Validate(f.path());
}

absl::StatusOr<std::unique_ptr<WeightSource>> GgufWeightSource::Open(
    std::unique_ptr<gguf::GgufFile> file) {
  std::unique_ptr<GgufWeightSource> src(new GgufWeightSource());
  src->file_ = std::move(file);
  const std::string& path = src->file_->path();
  RESA_RETURN_IF_ERROR(src->ReadConfig());
  const ModelConfig& c = src->config_;
  src->entries_.reserve(src->file_->tensors().size());
  for (const gguf::TensorInfo& t : src->file_->tensors()) {
    Entry e;
    e.tensor = &t;
    e.info.name = ToCanonical(t.name);
    e.info.shape.assign(t.ne.rbegin(), t.ne.rend());
    e.info.stored_bytes = t.nbytes;
    absl::StatusOr<GgmlTypeTraits> traits = TraitsOf(static_cast<uint32_t>(t.type));
    e.info.dtype = traits.ok() ? std::string(traits->name) : "?";
    if (c.arch == Arch::kLlama) {
      int64_t layer;
      std::string_view rest;
      if (SplitLayer(t.name, "blk.", &layer, &rest) &&
          (rest == "attn_q.weight" || rest == "attn_q.bias" || rest == "attn_k.weight" ||
           rest == "attn_k.bias")) {
        e.permute_head_dim = c.head_dim;
      }
    }
    if (!src->index_.emplace(e.info.name, src->entries_.size()).second) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": GGUF tensor '", t.name,
                                                     "' maps to the canonical name '", e.info.name,
                                                     "' that another tensor already has"));
    }
    src->entries_.push_back(std::move(e));
  }
  RESA_RETURN_IF_ERROR(CheckRequiredWeights(
      *src, [](std::string_view canonical) { return ToGguf(canonical); },
      [&src](const WeightInfo& w) -> absl::Status {
        const gguf::TensorInfo* t = src->entries_[src->index_.at(w.name)].tensor;
        absl::StatusOr<GgmlTypeTraits> traits = TraitsOf(static_cast<uint32_t>(t->type));
        if (!traits.ok() || !traits->dequantizable) {
          return absl::UnimplementedError(absl::StrCat("ggml type ", w.dtype, " (id ",
                                                       static_cast<uint32_t>(t->type),
                                                       ") cannot be dequantized by this build"));
        }
        if (w.shape.size() > 2) {
          return absl::InvalidArgumentError(absl::StrCat("has ", w.shape.size(), " dimensions"));
        }
        return absl::OkStatus();
      }));
  return std::unique_ptr<WeightSource>(std::move(src));
}

absl::Status GgufWeightSource::ReadRowsF32(std::string_view name_in, int64_t row_begin,
                                           int64_t row_end, float* out) const {
  const absl::string_view name = AsAbsl(name_in);
  auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::NotFoundError(absl::StrCat(path(), ": no weight named '", name, "'"));
  }
  const Entry& e = entries_[it->second];
  RESA_RETURN_IF_ERROR(CheckRowRange(*this, e.info, row_begin, row_end, out));
  if (row_end == row_begin) return absl::OkStatus();
  const gguf::TensorInfo& t = *e.tensor;
  const int64_t cols = t.row_length();
  absl::StatusOr<uint64_t> row_bytes = RowBytes(t.type, cols);
  if (!row_bytes.ok()) return Annotate(row_bytes.status(), absl::StrCat(path(), ": ", name));
  auto dequant = [&](int64_t src_row, int64_t nrows, float* dst) -> absl::Status {
    absl::Status st = DequantizeRow(t.type, t.data + static_cast<uint64_t>(src_row) * *row_bytes,
                                    dst, nrows * cols);
    return st.ok() ? st : Annotate(st, absl::StrCat(path(), ": weight '", name, "'"));
  };
  const int64_t hd = e.permute_head_dim;
  if (hd <= 0) return dequant(row_begin, row_end - row_begin, out);

  if (e.info.shape.size() == 1) {  // a bias: its single row holds the permuted elements
    if (cols % hd != 0) {
      return absl::InvalidArgumentError(absl::StrCat(path(), ": weight '", name, "' of ", cols,
                                                     " elements is not whole heads of ", hd));
    }
    std::vector<float> tmp(static_cast<size_t>(cols));
    RESA_RETURN_IF_ERROR(dequant(0, 1, tmp.data()));
    for (int64_t i = 0; i < cols; ++i) out[i] = tmp[static_cast<size_t>(PermutedRow(i, hd))];
    return absl::OkStatus();
  }
  if (t.rows() % hd != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path(), ": weight '", name, "' of ", t.rows(),
                                                   " rows is not whole heads of ", hd));
  }
  for (int64_t r = row_begin; r < row_end; ++r) {
    RESA_RETURN_IF_ERROR(dequant(PermutedRow(r, hd), 1, out + (r - row_begin) * cols));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<WeightSource>> OpenGgufWeightSource(const std::string& path) {
  RESA_ASSIGN_OR_RETURN(std::unique_ptr<gguf::GgufFile> file, gguf::GgufFile::Open(path));
  return GgufWeightSource::Open(std::move(file));
}

absl::StatusOr<std::unique_ptr<WeightSource>> GgufWeightSourceFromFile(
    std::unique_ptr<gguf::GgufFile> file) {
  if (file == nullptr) return absl::InvalidArgumentError("GgufWeightSourceFromFile: null file");
  return GgufWeightSource::Open(std::move(file));
}

}  // namespace resa::internal
