// Tokenizer::FromJsonText / FromJsonFile: Hugging Face tokenizer.json (byte-level BPE subset)
// plus tokenizer_config.json. The input is untrusted (and fuzzed): nlohmann-json parses without
// exceptions, and every field is type-checked before it is read; errors name the JSON path.
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "runtime/core/status.h"
#include "runtime/core/status.h"
#include "runtime/tokenizer/bpe_tokenizer.h"
#include "runtime/tokenizer/tokenizer.h"

namespace resa {
namespace {

using Json = nlohmann::json;

constexpr int kMaxNesting = 8;  // Sequence inside Sequence ...

absl::Status Bad(std::string_view path, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(AsAbsl(path), ": ", AsAbsl(what)));
}

std::string Child(std::string_view path, std::string_view key) {
  return path.empty() ? std::string(key)
                      : absl::StrCat(AsAbsl(path), ".", AsAbsl(key));
}

std::string Index(std::string_view path, size_t i) {
  return absl::StrCat(AsAbsl(path), "[", i, "]");
}

const char* TypeName(const Json& j) { return j.type_name(); }

// Member `key` of object `obj`; nullptr when absent or null.
const Json* Member(const Json& obj, std::string_view key) {
  auto it = obj.find(std::string(key));
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::StatusOr<bool> BoolField(const Json& obj, std::string_view key, std::string_view path,
                               bool fallback) {
  const Json* v = Member(obj, key);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) {
    return Bad(Child(path, key), absl::StrCat("expected a boolean, got ", TypeName(*v)));
  }
  return v->get<bool>();
}

absl::StatusOr<std::optional<std::string>> OptStringField(const Json& obj, std::string_view key,
                                                          std::string_view path) {
  const Json* v = Member(obj, key);
  if (v == nullptr) return std::optional<std::string>();
  if (!v->is_string()) {
    return Bad(Child(path, key), absl::StrCat("expected a string, got ", TypeName(*v)));
  }
  return std::optional<std::string>(v->get<std::string>());
}

absl::StatusOr<std::string> StringField(const Json& obj, std::string_view key,
                                        std::string_view path) {
  RESA_ASSIGN_OR_RETURN(std::optional<std::string> s, OptStringField(obj, key, path));
  if (!s.has_value()) return Bad(Child(path, key), "missing");
  return *std::move(s);
}

// A token id: a non-negative integer below kMaxVocabSize.
absl::StatusOr<int32_t> IdValue(const Json& v, std::string_view path) {
  if (v.is_number_unsigned()) {
    const auto u = v.get<uint64_t>();
    if (u < static_cast<uint64_t>(tok::kMaxVocabSize)) return static_cast<int32_t>(u);
    return Bad(path, absl::StrCat("id ", u, " is too large (limit ", tok::kMaxVocabSize, ")"));
  }
  return Bad(path, absl::StrCat("expected a non-negative integer id, got ", TypeName(v)));
}

absl::Status ParseNormalizer(const Json& j, const std::string& path, int depth, bool* nfc) {
  if (j.is_null()) return absl::OkStatus();
  if (!j.is_object()) return Bad(path, absl::StrCat("expected an object, got ", TypeName(j)));
  if (depth > kMaxNesting) return Bad(path, "nested too deeply");
  RESA_ASSIGN_OR_RETURN(const std::string type, StringField(j, "type", path));
  if (type == "NFC") {
    *nfc = true;
    return absl::OkStatus();
  }
  if (type == "Sequence") {
    const Json* list = Member(j, "normalizers");
    const std::string list_path = Child(path, "normalizers");
    if (list == nullptr || !list->is_array()) return Bad(list_path, "expected an array");
    for (size_t i = 0; i < list->size(); ++i) {
      RESA_RETURN_IF_ERROR(ParseNormalizer((*list)[i], Index(list_path, i), depth + 1, nfc));
    }
    return absl::OkStatus();
  }
  return Bad(Child(path, "type"),
             absl::StrCat("unsupported normalizer '", type, "' (supported: NFC, Sequence)"));
}

absl::Status ParsePreTokenizer(const Json& j, const std::string& path, int depth,
                               tok::PreTokenizer* pre) {
  if (!j.is_object()) return Bad(path, absl::StrCat("expected an object, got ", TypeName(j)));
  if (depth > kMaxNesting) return Bad(path, "nested too deeply");
  RESA_ASSIGN_OR_RETURN(const std::string type, StringField(j, "type", path));
  if (type == "Sequence") {
    const Json* list = Member(j, "pretokenizers");
    const std::string list_path = Child(path, "pretokenizers");
    if (list == nullptr || !list->is_array()) return Bad(list_path, "expected an array");
    for (size_t i = 0; i < list->size(); ++i) {
      RESA_RETURN_IF_ERROR(ParsePreTokenizer((*list)[i], Index(list_path, i), depth + 1, pre));
    }
    return absl::OkStatus();
  }
  if (type == "ByteLevel") {
    // Hugging Face's defaults for absent fields.
    RESA_ASSIGN_OR_RETURN(const bool prefix, BoolField(j, "add_prefix_space", path, true));
    RESA_ASSIGN_OR_RETURN(const bool use_regex, BoolField(j, "use_regex", path, true));
    return Annotate(pre->AddByteLevel(prefix, use_regex), path);
  }
  if (type == "Digits") {
    RESA_ASSIGN_OR_RETURN(const bool single, BoolField(j, "individual_digits", path, false));
    return Annotate(pre->AddSplit(single ? R"(\p{N})" : R"(\p{N}+)"), path);
  }
  if (type == "Split") {
    const Json* pattern = Member(j, "pattern");
    const std::string pattern_path = Child(path, "pattern");
    if (pattern == nullptr || !pattern->is_object() || pattern->size() != 1) {
      return Bad(pattern_path, "expected {\"Regex\": ...} or {\"String\": ...}");
    }
    RESA_ASSIGN_OR_RETURN(const std::optional<std::string> regex,
                          OptStringField(*pattern, "Regex", pattern_path));
    RESA_ASSIGN_OR_RETURN(const std::optional<std::string> literal,
                          OptStringField(*pattern, "String", pattern_path));
    if (!regex.has_value() && !literal.has_value()) {
      return Bad(pattern_path, "expected {\"Regex\": ...} or {\"String\": ...}");
    }
    RESA_ASSIGN_OR_RETURN(const std::string behavior, StringField(j, "behavior", path));
    if (behavior != "Isolated") {
      return Bad(Child(path, "behavior"),
                 absl::StrCat("unsupported split behavior '", behavior, "' (supported: Isolated)"));
    }
    RESA_ASSIGN_OR_RETURN(const bool invert, BoolField(j, "invert", path, false));
    if (invert) return Bad(Child(path, "invert"), "inverted splits are not supported");
    const bool is_literal = literal.has_value();
    return Annotate(pre->AddSplit(is_literal ? *literal : *regex, is_literal), pattern_path);
  }
  return Bad(Child(path, "type"),
             absl::StrCat("unsupported pre-tokenizer '", type,
                          "' (supported: ByteLevel, Split, Digits, Sequence)"));
}

absl::Status CheckDecoder(const Json& j, const std::string& path, int depth) {
  if (!j.is_object()) return Bad(path, "expected a ByteLevel decoder");
  if (depth > kMaxNesting) return Bad(path, "nested too deeply");
  RESA_ASSIGN_OR_RETURN(const std::string type, StringField(j, "type", path));
  if (type == "ByteLevel") return absl::OkStatus();
  if (type == "Sequence") {
    const Json* list = Member(j, "decoders");
    const std::string list_path = Child(path, "decoders");
    if (list == nullptr || !list->is_array() || list->empty()) {
      return Bad(list_path, "expected a non-empty array");
    }
    for (size_t i = 0; i < list->size(); ++i) {
      RESA_RETURN_IF_ERROR(CheckDecoder((*list)[i], Index(list_path, i), depth + 1));
    }
    return absl::OkStatus();
  }
  return Bad(Child(path, "type"),
             absl::StrCat("unsupported decoder '", type, "' (supported: ByteLevel)"));
}

// The BOS of a TemplateProcessing post-processor whose single-sequence template starts with a
// special token ("<|begin_of_text|>" $A): that token means "add BOS". Other post-processors
// than ByteLevel and TemplateProcessing are rejected.
absl::Status ParsePostProcessor(const Json& j, const std::string& path, int depth,
                                std::optional<std::string>* bos) {
  if (j.is_null()) return absl::OkStatus();
  if (!j.is_object()) return Bad(path, absl::StrCat("expected an object, got ", TypeName(j)));
  if (depth > kMaxNesting) return Bad(path, "nested too deeply");
  RESA_ASSIGN_OR_RETURN(const std::string type, StringField(j, "type", path));
  if (type == "ByteLevel") return absl::OkStatus();
  if (type == "Sequence") {
    const Json* list = Member(j, "processors");
    const std::string list_path = Child(path, "processors");
    if (list == nullptr || !list->is_array()) return Bad(list_path, "expected an array");
    for (size_t i = 0; i < list->size(); ++i) {
      RESA_RETURN_IF_ERROR(ParsePostProcessor((*list)[i], Index(list_path, i), depth + 1, bos));
    }
    return absl::OkStatus();
  }
  if (type == "TemplateProcessing") {
    const Json* single = Member(j, "single");
    if (single == nullptr || !single->is_array())
      return Bad(Child(path, "single"), "expected an array");
    if (single->empty() || !(*single)[0].is_object()) return absl::OkStatus();
    const Json* special = Member((*single)[0], "SpecialToken");
    if (special == nullptr) return absl::OkStatus();
    if (!special->is_object())
      return Bad(Child(path, "single[0].SpecialToken"), "expected an object");
    RESA_ASSIGN_OR_RETURN(*bos, StringField(*special, "id", Child(path, "single[0].SpecialToken")));
    return absl::OkStatus();
  }
  return Bad(Child(path, "type"),
             absl::StrCat("unsupported post-processor '", type,
                          "' (supported: ByteLevel, TemplateProcessing, Sequence)"));
}

absl::Status ParseModel(const Json& model, tok::TokenizerSpec* spec) {
  const std::string path = "model";
  if (!model.is_object()) return Bad(path, "expected an object");
  RESA_ASSIGN_OR_RETURN(const std::optional<std::string> type, OptStringField(model, "type", path));
  if (type.has_value() && *type != "BPE") {
    return Bad(Child(path, "type"),
               absl::StrCat("unsupported model '", *type, "' (supported: BPE)"));
  }
  RESA_ASSIGN_OR_RETURN(const bool byte_fallback, BoolField(model, "byte_fallback", path, false));
  if (byte_fallback) return Bad(Child(path, "byte_fallback"), "byte fallback is not supported");
  RESA_ASSIGN_OR_RETURN(spec->bpe.ignore_merges, BoolField(model, "ignore_merges", path, false));
  RESA_ASSIGN_OR_RETURN(const bool fuse_unk, BoolField(model, "fuse_unk", path, false));
  (void)fuse_unk;  // only matters for unknown characters, which byte-level vocabularies lack
  if (const Json* dropout = Member(model, "dropout"); dropout != nullptr) {
    if (!dropout->is_number()) return Bad(Child(path, "dropout"), "expected a number or null");
    if (dropout->get<double>() != 0.0)
      return Bad(Child(path, "dropout"), "BPE dropout is not supported");
  }
  for (std::string_view key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    RESA_ASSIGN_OR_RETURN(const std::optional<std::string> affix, OptStringField(model, key, path));
    if (affix.has_value() && !affix->empty()) {
      return Bad(Child(path, key), "subword prefixes/suffixes are not supported");
    }
  }

  const Json* vocab = Member(model, "vocab");
  const std::string vocab_path = Child(path, "vocab");
  if (vocab == nullptr || !vocab->is_object()) return Bad(vocab_path, "expected an object");
  int32_t max_id = -1;
  spec->token_to_id.reserve(vocab->size());
  for (const auto& [text, value] : vocab->items()) {
    RESA_ASSIGN_OR_RETURN(const int32_t id, IdValue(value, Child(vocab_path, text)));
    spec->token_to_id[text] = id;
    max_id = std::max(max_id, id);
  }
  // Real vocabularies are dense; a sparse one would only make us allocate for nothing.
  const size_t id_count = static_cast<size_t>(max_id + 1);
  if (id_count > 2 * vocab->size() + 1024) {
    return Bad(vocab_path, absl::StrCat("ids are sparse: largest id ", max_id, " for ",
                                        vocab->size(), " tokens"));
  }
  spec->id_to_token.assign(id_count, std::string());
  std::vector<bool> seen(id_count, false);
  for (const auto& [text, id] : spec->token_to_id) {
    if (!seen[static_cast<size_t>(id)]) {
      seen[static_cast<size_t>(id)] = true;
      spec->id_to_token[static_cast<size_t>(id)] = text;
    }
  }

  const Json* merges = Member(model, "merges");
  const std::string merges_path = Child(path, "merges");
  if (merges == nullptr || !merges->is_array()) return Bad(merges_path, "expected an array");
  spec->merges.reserve(merges->size());
  for (size_t i = 0; i < merges->size(); ++i) {
    const Json& m = (*merges)[i];
    if (m.is_string()) {
      const auto& s = m.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        return Bad(Index(merges_path, i), "expected \"left right\" (one space)");
      }
      spec->merges.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      spec->merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      return Bad(Index(merges_path, i), "expected \"left right\" or [\"left\", \"right\"]");
    }
  }

  RESA_ASSIGN_OR_RETURN(const std::optional<std::string> unk,
                        OptStringField(model, "unk_token", path));
  if (unk.has_value()) {
    auto it = spec->token_to_id.find(*unk);
    if (it != spec->token_to_id.end()) spec->bpe.unk_id = it->second;
  }
  return absl::OkStatus();
}

absl::Status ParseAddedTokens(const Json& list, tok::TokenizerSpec* spec) {
  const std::string path = "added_tokens";
  if (!list.is_array()) return Bad(path, "expected an array");
  for (size_t i = 0; i < list.size(); ++i) {
    const Json& t = list[i];
    const std::string p = Index(path, i);
    if (!t.is_object()) return Bad(p, "expected an object");
    tok::AddedToken a;
    const Json* id = Member(t, "id");
    if (id == nullptr) return Bad(Child(p, "id"), "missing");
    RESA_ASSIGN_OR_RETURN(a.id, IdValue(*id, Child(p, "id")));
    RESA_ASSIGN_OR_RETURN(a.content, StringField(t, "content", p));
    if (a.content.empty()) return Bad(Child(p, "content"), "empty");
    RESA_ASSIGN_OR_RETURN(a.special, BoolField(t, "special", p, false));
    RESA_ASSIGN_OR_RETURN(a.lstrip, BoolField(t, "lstrip", p, false));
    RESA_ASSIGN_OR_RETURN(a.rstrip, BoolField(t, "rstrip", p, false));
    RESA_ASSIGN_OR_RETURN(a.single_word, BoolField(t, "single_word", p, false));
    RESA_ASSIGN_OR_RETURN(a.normalized, BoolField(t, "normalized", p, !a.special));
    spec->added_tokens.push_back(std::move(a));
  }
  return absl::OkStatus();
}

// Id of `text` as an added token or a model token, or -1.
int32_t SpecTokenId(const tok::TokenizerSpec& spec, std::string_view text) {
  for (auto it = spec.added_tokens.rbegin(); it != spec.added_tokens.rend(); ++it) {
    if (it->content == text) return it->id;
  }
  auto it = spec.token_to_id.find(AsAbsl(text));
  return it == spec.token_to_id.end() ? -1 : it->second;
}

absl::StatusOr<tok::TokenizerSpec> SpecFromJson(std::string_view text, std::string_view source) {
  Json root = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return absl::InvalidArgumentError("not valid JSON");
  if (!root.is_object()) return Bad("(root)", "expected an object");
  tok::TokenizerSpec spec;
  spec.source = std::string(source);

  if (const Json* n = Member(root, "normalizer"); n != nullptr) {
    RESA_RETURN_IF_ERROR(ParseNormalizer(*n, "normalizer", 0, &spec.nfc));
  }
  const Json* pre = Member(root, "pre_tokenizer");
  if (pre == nullptr) return Bad("pre_tokenizer", "missing (byte-level BPE needs ByteLevel)");
  RESA_RETURN_IF_ERROR(ParsePreTokenizer(*pre, "pre_tokenizer", 0, &spec.pre_tokenizer));
  if (!spec.pre_tokenizer.has_byte_level()) {
    return Bad("pre_tokenizer", "no ByteLevel step (only byte-level BPE is supported)");
  }
  const Json* model = Member(root, "model");
  if (model == nullptr) return Bad("model", "missing");
  RESA_RETURN_IF_ERROR(ParseModel(*model, &spec));
  const Json* decoder = Member(root, "decoder");
  if (decoder == nullptr) return Bad("decoder", "missing (expected ByteLevel)");
  RESA_RETURN_IF_ERROR(CheckDecoder(*decoder, "decoder", 0));
  if (const Json* added = Member(root, "added_tokens"); added != nullptr) {
    RESA_RETURN_IF_ERROR(ParseAddedTokens(*added, &spec));
  }
  std::optional<std::string> bos;
  if (const Json* post = Member(root, "post_processor"); post != nullptr) {
    RESA_RETURN_IF_ERROR(ParsePostProcessor(*post, "post_processor", 0, &bos));
  }
  if (bos.has_value()) {
    spec.bos_id = SpecTokenId(spec, *bos);
    spec.add_bos = spec.bos_id >= 0;
  }
  return spec;
}

// A special-token entry of tokenizer_config.json: "text", {"content": "text", ...} or null.
absl::StatusOr<std::optional<std::string>> ConfigToken(const Json& cfg, std::string_view key) {
  const Json* v = Member(cfg, key);
  if (v == nullptr) return std::optional<std::string>();
  if (v->is_string()) return std::optional<std::string>(v->get<std::string>());
  if (v->is_object()) {
    RESA_ASSIGN_OR_RETURN(std::string content, StringField(*v, "content", key));
    return std::optional<std::string>(std::move(content));
  }
  return Bad(key, absl::StrCat("expected a string or an object, got ", TypeName(*v)));
}

absl::Status ApplyConfig(std::string_view text, tok::TokenizerSpec* spec) {
  Json cfg = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (cfg.is_discarded()) return absl::InvalidArgumentError("not valid JSON");
  if (!cfg.is_object()) return Bad("(root)", "expected an object");
  if (const Json* t = Member(cfg, "chat_template"); t != nullptr) {
    if (t->is_string()) {
      spec->chat_template = t->get<std::string>();
    } else if (t->is_array()) {
      // Named templates: [{"name": "default", "template": "..."}, ...]; "default" or the first.
      for (size_t i = 0; i < t->size(); ++i) {
        const Json& e = (*t)[i];
        const std::string p = Index("chat_template", i);
        if (!e.is_object()) return Bad(p, "expected an object");
        RESA_ASSIGN_OR_RETURN(const std::string name, StringField(e, "name", p));
        RESA_ASSIGN_OR_RETURN(std::string body, StringField(e, "template", p));
        if (i == 0 || name == "default") spec->chat_template = std::move(body);
        if (name == "default") break;
      }
    } else {
      return Bad("chat_template", "expected a string or an array");
    }
  }
  const bool had_bos = spec->add_bos;
  RESA_ASSIGN_OR_RETURN(spec->add_bos, BoolField(cfg, "add_bos_token", "", had_bos));
  struct Slot {
    std::string_view key;
    int32_t* id;
  };
  for (const Slot& s : {Slot{"bos_token", &spec->bos_id}, Slot{"eos_token", &spec->eos_id},
                        Slot{"pad_token", &spec->pad_id}}) {
    RESA_ASSIGN_OR_RETURN(const std::optional<std::string> token, ConfigToken(cfg, s.key));
    if (!token.has_value()) continue;
    const int32_t id = SpecTokenId(*spec, *token);
    if (id < 0) return Bad(s.key, absl::StrCat("'", *token, "' is not in the vocabulary"));
    *s.id = id;
  }
  if (spec->bos_id < 0) spec->add_bos = false;
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path.string()));
  std::ostringstream buf;
  buf << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", path.string()));
  return std::move(buf).str();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJsonText(std::string_view json,
                                                                   std::string_view source) {
  auto spec = SpecFromJson(json, source);
  if (!spec.ok()) return Annotate(spec.status(), source);
  auto t = tok::BuildTokenizer(*std::move(spec));
  if (!t.ok()) return Annotate(t.status(), source);
  return t;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJsonFile(const std::string& path) {
  RESA_ASSIGN_OR_RETURN(const std::string text, ReadFile(path));
  auto spec = SpecFromJson(text, path);
  if (!spec.ok()) return Annotate(spec.status(), path);
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  std::error_code ec;
  const std::filesystem::path config = dir / "tokenizer_config.json";
  if (std::filesystem::exists(config, ec)) {
    RESA_ASSIGN_OR_RETURN(const std::string config_text, ReadFile(config));
    RESA_RETURN_IF_ERROR(Annotate(ApplyConfig(config_text, &*spec), config.string()));
  }
  const std::filesystem::path jinja = dir / "chat_template.jinja";
  if (spec->chat_template.empty() && std::filesystem::exists(jinja, ec)) {
    RESA_ASSIGN_OR_RETURN(spec->chat_template, ReadFile(jinja));
  }
  auto t = tok::BuildTokenizer(*std::move(spec));
  if (!t.ok()) return Annotate(t.status(), path);
  return t;
}

}  // namespace resa
