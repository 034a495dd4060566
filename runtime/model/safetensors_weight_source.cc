// WeightSource over a Hugging Face directory: config.json plus model.safetensors, or shards
// listed by model.safetensors.index.json.
#include <exception>
#include <limits>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "runtime/core/mapped_file.h"
#include "runtime/core/status.h"
#include "runtime/model/safetensors.h"
#include "runtime/model/weight_source_internal.h"

namespace resa::internal {
namespace {

using Json = nlohmann::json;
constexpr uint64_t kMaxJsonFileBytes = uint64_t{64} << 20;

absl::StatusOr<Json> ReadJsonFile(const std::string& path) {
  RESA_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  if (file->size() > kMaxJsonFileBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", file->size(), " bytes is too large for a JSON config"));
  }
  const char* begin = reinterpret_cast<const char*>(file->data());
  Json j = Json::parse(begin, begin + file->size(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, ": invalid JSON"));
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": top level is not a JSON object"));
  }
  return j;
}

// config.json accessors; a JSON null counts as absent (HF writes null for unset options).
const Json* Field(const Json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

absl::Status GetInt(const Json& j, const std::string& path, const char* key, int* out,
                    bool required) {
  const Json* v = Field(j, key);
  if (v == nullptr) {
    if (!required) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(path, ": '", key, "' is missing"));
  }
  if (!v->is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": '", key, "' is not an integer"));
  }
  const bool neg = v->is_number_unsigned() ? false : v->get<int64_t>() < 0;
  if (neg || v->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int>::max())) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": '", key, "' = ", v->dump(), " is out of range"));
  }
  *out = static_cast<int>(v->get<int64_t>());
  return absl::OkStatus();
}

absl::Status GetFloat(const Json& j, const std::string& path, const char* key, float* out) {
  const Json* v = Field(j, key);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_number()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": '", key, "' is not a number"));
  }
  *out = static_cast<float>(v->get<double>());
  return absl::OkStatus();
}

absl::Status GetBool(const Json& j, const std::string& path, const char* key, bool* out) {
  const Json* v = Field(j, key);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_boolean()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": '", key, "' is not a boolean"));
  }
  *out = v->get<bool>();
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ParseConfig(const Json& j, const std::string& path) {
  ModelConfig c;
  std::string arch;
  if (const Json* mt = Field(j, "model_type"); mt != nullptr && mt->is_string()) {
    arch = mt->get<std::string>();
  } else if (const Json* archs = Field(j, "architectures");
             archs != nullptr && archs->is_array() && !archs->empty() && (*archs)[0].is_string()) {
    const std::string a = (*archs)[0].get<std::string>();
    if (a == "LlamaForCausalLM") arch = "llama";
    if (a == "Qwen2ForCausalLM") arch = "qwen2";
    if (arch.empty()) arch = a;
  }
  if (arch == "llama") {
    c.arch = Arch::kLlama;
    c.max_position_embeddings = 2048;
  } else if (arch == "qwen2") {
    c.arch = Arch::kQwen2;
    c.max_position_embeddings = 32768;
    c.attention_bias = true;
  } else {
    return absl::UnimplementedError(
        absl::StrCat(path, ": unsupported architecture '", arch,
                     "' (model_type / architectures); supported: "
                     "llama (LlamaForCausalLM), qwen2 (Qwen2ForCausalLM)"));
  }
  c.arch_name = arch;
  if (const Json* n = Field(j, "_name_or_path"); n != nullptr && n->is_string()) {
    c.model_name = n->get<std::string>();
  }
  RESA_RETURN_IF_ERROR(GetInt(j, path, "hidden_size", &c.hidden_size, true));
  RESA_RETURN_IF_ERROR(GetInt(j, path, "intermediate_size", &c.intermediate_size, true));
  RESA_RETURN_IF_ERROR(GetInt(j, path, "num_hidden_layers", &c.num_layers, true));
  RESA_RETURN_IF_ERROR(GetInt(j, path, "num_attention_heads", &c.num_heads, true));
  RESA_RETURN_IF_ERROR(GetInt(j, path, "vocab_size", &c.vocab_size, true));
  c.num_kv_heads = c.num_heads;
  RESA_RETURN_IF_ERROR(GetInt(j, path, "num_key_value_heads", &c.num_kv_heads, false));
  RESA_RETURN_IF_ERROR(
      GetInt(j, path, "max_position_embeddings", &c.max_position_embeddings, false));
  if (Field(j, "head_dim") != nullptr) {
    RESA_RETURN_IF_ERROR(GetInt(j, path, "head_dim", &c.head_dim, true));
  } else {
    if (c.num_heads <= 0 || c.hidden_size % c.num_heads != 0) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": hidden_size = ", c.hidden_size,
                                                     " is not a multiple of num_attention_heads = ",
                                                     c.num_heads, " and there is no head_dim"));
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  c.rms_norm_eps = 1e-6f;
  RESA_RETURN_IF_ERROR(GetFloat(j, path, "rms_norm_eps", &c.rms_norm_eps));
  c.rope_theta = 10000.0f;
  RESA_RETURN_IF_ERROR(GetFloat(j, path, "rope_theta", &c.rope_theta));
  // Scaled RoPE variants (linear, dynamic, yarn, llama3) change the rotation angles; running
  // such a model with plain RoPE would produce wrong output silently, so refuse it.
  if (const auto* rs = Field(j, "rope_scaling"); rs != nullptr && !rs->is_null()) {
    const auto* type = rs->is_object() ? (rs->contains("rope_type") ? &(*rs)["rope_type"]
                                          : rs->contains("type") ? &(*rs)["type"] : nullptr)
                                       : nullptr;
    const std::string t = type != nullptr && type->is_string() ? type->get<std::string>() : "?";
    if (t != "default") {
      return absl::UnimplementedError(absl::StrCat(
          path, ": rope_scaling of type '", t, "' is not supported (plain RoPE only)"));
    }
  }
  c.tie_word_embeddings = false;
  RESA_RETURN_IF_ERROR(GetBool(j, path, "tie_word_embeddings", &c.tie_word_embeddings));
  if (c.arch == Arch::kLlama) {
    RESA_RETURN_IF_ERROR(GetBool(j, path, "attention_bias", &c.attention_bias));
  }
  RESA_RETURN_IF_ERROR(c.Validate(path));
  return c;
}

// A shard name from the index must be a plain file name inside the model directory.
bool IsPlainFileName(const std::string& s) {
  return !s.empty() && s != "." && s != ".." && s.find('/') == std::string::npos &&
         s.find('\\') == std::string::npos && s.find('\0') == std::string::npos;
}

class SafetensorsWeightSource : public WeightSource {
 public:
  static absl::StatusOr<std::unique_ptr<WeightSource>> Open(const std::string& dir);

  const ModelConfig& config() const override { return config_; }
  std::string format() const override { return "safetensors"; }
  std::string path() const override { return dir_; }
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
  std::string hf_dir() const override { return dir_; }

 private:
  struct Entry {
    WeightInfo info;
    const safetensors::TensorInfo* tensor = nullptr;
    const safetensors::SafetensorsFile* shard = nullptr;
  };
  absl::Status AddTensor(const safetensors::SafetensorsFile& shard,
                         const safetensors::TensorInfo& t);

  std::string dir_;
  ModelConfig config_;
  std::vector<std::unique_ptr<safetensors::SafetensorsFile>> shards_;
  std::vector<Entry> entries_;
  absl::flat_hash_map<std::string, size_t> index_;
};

absl::Status SafetensorsWeightSource::AddTensor(const safetensors::SafetensorsFile& shard,
                                                const safetensors::TensorInfo& t) {
  Entry e;
  e.tensor = &t;
  e.shard = &shard;
  e.info.name = t.name;
  e.info.shape = t.shape;
  e.info.dtype = std::string(safetensors::DtypeName(t.dtype));
  e.info.stored_bytes = t.end - t.begin;
  if (!index_.emplace(t.name, entries_.size()).second) {
    return absl::InvalidArgumentError(
        absl::StrCat(shard.path(), ": tensor '", t.name, "' also appears in another shard"));
  }
  entries_.push_back(std::move(e));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<WeightSource>> SafetensorsWeightSource::Open(
    const std::string& dir_in) {
  std::string dir = dir_in;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  std::unique_ptr<SafetensorsWeightSource> src(new SafetensorsWeightSource());
  src->dir_ = dir;
  const std::string config_path = dir + "/config.json";
  absl::StatusOr<Json> config = ReadJsonFile(config_path);
  if (!config.ok()) {
    return Annotate(config.status(), absl::StrCat(dir, " is not a Hugging Face model directory"));
  }
  RESA_ASSIGN_OR_RETURN(src->config_, ParseConfig(*config, config_path));

  const std::string index_path = dir + "/model.safetensors.index.json";
  absl::StatusOr<std::unique_ptr<MappedFile>> index_file = MappedFile::Open(index_path);
  if (index_file.ok()) {
    index_file->reset();
    RESA_ASSIGN_OR_RETURN(Json index, ReadJsonFile(index_path));
    const Json* map = Field(index, "weight_map");
    if (map == nullptr || !map->is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": 'weight_map' is missing or not an object"));
    }
    absl::flat_hash_map<std::string, size_t> shard_of_file;
    std::vector<std::pair<std::string, size_t>> wanted;  // tensor name, shard
    for (const auto& [name, file] : map->items()) {
      if (!file.is_string() || !IsPlainFileName(file.get<std::string>())) {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": 'weight_map' entry for '",
                                                       name, "' is not a file name in ", dir));
      }
      const std::string shard_name = file.get<std::string>();
      auto [it, inserted] = shard_of_file.emplace(shard_name, src->shards_.size());
      if (inserted) {
        RESA_ASSIGN_OR_RETURN(std::unique_ptr<safetensors::SafetensorsFile> shard,
                              safetensors::SafetensorsFile::Open(dir + "/" + shard_name));
        src->shards_.push_back(std::move(shard));
      }
      wanted.emplace_back(name, it->second);
    }
    for (const auto& [name, shard_index] : wanted) {
      const safetensors::SafetensorsFile& shard = *src->shards_[shard_index];
      const safetensors::TensorInfo* t = shard.Find(name);
      if (t == nullptr) {
        return absl::NotFoundError(absl::StrCat(index_path, " places tensor '", name, "' in ",
                                                shard.path(), ", which does not contain it"));
      }
      RESA_RETURN_IF_ERROR(src->AddTensor(shard, *t));
    }
  } else if (index_file.status().code() == absl::StatusCode::kNotFound) {
    const std::string single = dir + "/model.safetensors";
    absl::StatusOr<std::unique_ptr<safetensors::SafetensorsFile>> shard =
        safetensors::SafetensorsFile::Open(single);
    if (!shard.ok()) {
      return Annotate(shard.status(), absl::StrCat(dir,
                                                   ": no model.safetensors.index.json, "
                                                   "and model.safetensors is unreadable"));
    }
    src->shards_.push_back(std::move(*shard));
    for (const safetensors::TensorInfo& t : src->shards_[0]->tensors()) {
      RESA_RETURN_IF_ERROR(src->AddTensor(*src->shards_[0], t));
    }
  } else {
    return index_file.status();
  }

  RESA_RETURN_IF_ERROR(CheckRequiredWeights(
      *src, [](std::string_view canonical) { return std::string(canonical); },
      [&src](const WeightInfo& w) -> absl::Status {
        const Entry& e = src->entries_[src->index_.at(w.name)];
        if (!safetensors::IsFloatDtype(e.tensor->dtype)) {
          return absl::UnimplementedError(
              absl::StrCat("dtype ", w.dtype, " in ", e.shard->path(),
                           " cannot be read as fp32 (supported: F32, F16, BF16, F64)"));
        }
        return absl::OkStatus();
      }));
  return std::unique_ptr<WeightSource>(std::move(src));
}

absl::Status SafetensorsWeightSource::ReadRowsF32(std::string_view name_in, int64_t row_begin,
                                                  int64_t row_end, float* out) const {
  const absl::string_view name = AsAbsl(name_in);
  auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::NotFoundError(absl::StrCat(dir_, ": no weight named '", name, "'"));
  }
  const Entry& e = entries_[it->second];
  RESA_RETURN_IF_ERROR(CheckRowRange(*this, e.info, row_begin, row_end, out));
  const int64_t cols = e.info.cols();
  const size_t esize = safetensors::DtypeSize(e.tensor->dtype);
  absl::Status st = safetensors::ConvertToF32(
      e.tensor->dtype, e.tensor->data + static_cast<uint64_t>(row_begin * cols) * esize, out,
      (row_end - row_begin) * cols);
  return st.ok() ? st : Annotate(st, absl::StrCat(e.shard->path(), ": weight '", name, "'"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<WeightSource>> OpenSafetensorsWeightSource(const std::string& dir) {
  try {
    return SafetensorsWeightSource::Open(dir);
  } catch (const std::exception& e) {  // nlohmann misuse must not escape the library
    return absl::InternalError(
        absl::StrCat(dir, ": unexpected error reading the model: ", e.what()));
  }
}

}  // namespace resa::internal
