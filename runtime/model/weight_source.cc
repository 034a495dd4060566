#include "runtime/model/weight_source.h"

#include <sys/stat.h>

#include <cstdio>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/core/status.h"
#include "runtime/model/weight_source_internal.h"

namespace resa {

int64_t WeightInfo::rows() const {
  int64_t n = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i) n *= shape[i];
  return n;
}

int64_t WeightInfo::cols() const { return shape.empty() ? 1 : shape.back(); }

absl::StatusOr<std::unique_ptr<WeightSource>> OpenWeightSource(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("model path ", path, " does not exist"));
  }
  if (S_ISDIR(st.st_mode)) return internal::OpenSafetensorsWeightSource(path);
  if (absl::EndsWith(path, ".gguf")) return internal::OpenGgufWeightSource(path);
  // A file inside a Hugging Face directory stands for the directory.
  if (absl::EndsWith(path, "/config.json") || absl::EndsWith(path, ".safetensors") ||
      absl::EndsWith(path, "/model.safetensors.index.json")) {
    const size_t slash = path.find_last_of('/');
    return internal::OpenSafetensorsWeightSource(
        slash == std::string::npos ? std::string(".") : path.substr(0, slash));
  }
  if (FILE* f = std::fopen(path.c_str(), "rb")) {  // a GGUF file without the extension
    char magic[4] = {};
    const size_t got = std::fread(magic, 1, 4, f);
    std::fclose(f);
    if (got == 4 && std::memcmp(magic, "GGUF", 4) == 0) {
      return internal::OpenGgufWeightSource(path);
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("model path ", path,
                   " is neither a .gguf file nor a Hugging Face directory "
                   "(config.json + *.safetensors)"));
}

namespace internal {

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::vector<RequiredWeight> RequiredWeights(const ModelConfig& c) {
  const int64_t h = c.hidden_size, v = c.vocab_size, q = c.q_dim(), kv = c.kv_dim(),
                ff = c.intermediate_size;
  std::vector<RequiredWeight> out = {{"model.embed_tokens.weight", {v, h}},
                                     {"model.norm.weight", {h}}};
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {v, h}});
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    out.push_back({p + "input_layernorm.weight", {h}});
    out.push_back({p + "post_attention_layernorm.weight", {h}});
    out.push_back({p + "self_attn.q_proj.weight", {q, h}});
    out.push_back({p + "self_attn.k_proj.weight", {kv, h}});
    out.push_back({p + "self_attn.v_proj.weight", {kv, h}});
    out.push_back({p + "self_attn.o_proj.weight", {h, q}});
    if (c.attention_bias) {
      out.push_back({p + "self_attn.q_proj.bias", {q}});
      out.push_back({p + "self_attn.k_proj.bias", {kv}});
      out.push_back({p + "self_attn.v_proj.bias", {kv}});
    }
    out.push_back({p + "mlp.gate_proj.weight", {ff, h}});
    out.push_back({p + "mlp.up_proj.weight", {ff, h}});
    out.push_back({p + "mlp.down_proj.weight", {h, ff}});
  }
  return out;
}

absl::Status CheckRequiredWeights(const WeightSource& src,
                                  absl::FunctionRef<std::string(std::string_view)> stored_name,
                                  absl::FunctionRef<absl::Status(const WeightInfo&)> readable) {
  for (const RequiredWeight& r : RequiredWeights(src.config())) {
    const WeightInfo* w = src.Find(r.name);
    const std::string stored = stored_name(r.name);
    const std::string also = stored == r.name ? "" : absl::StrCat(" (stored as '", stored, "')");
    if (w == nullptr) {
      return absl::NotFoundError(absl::StrCat(src.path(), ": weight '", r.name, "'", also,
                                              " is missing; the ", src.config().arch_name,
                                              " architecture needs it"));
    }
    if (w->shape != r.shape) {
      return absl::InvalidArgumentError(
          absl::StrCat(src.path(), ": weight '", r.name, "'", also, " has shape ",
                       ShapeString(w->shape), ", the config implies ", ShapeString(r.shape)));
    }
    if (absl::Status st = readable(*w); !st.ok()) {
      return absl::Status(
          st.code(), absl::StrCat(src.path(), ": weight '", r.name, "'", also, ": ", st.message()));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckRowRange(const WeightSource& src, const WeightInfo& w, int64_t row_begin,
                           int64_t row_end, const float* out) {
  if (row_begin < 0 || row_begin > row_end || row_end > w.rows()) {
    return absl::OutOfRangeError(absl::StrCat(src.path(), ": weight '", w.name, "': rows [",
                                              row_begin, ", ", row_end, ") are outside [0, ",
                                              w.rows(), ")"));
  }
  if (out == nullptr && row_end > row_begin) {
    return absl::InvalidArgumentError(
        absl::StrCat(src.path(), ": weight '", w.name, "': null output buffer"));
  }
  return absl::OkStatus();
}

}  // namespace internal
}  // namespace resa
