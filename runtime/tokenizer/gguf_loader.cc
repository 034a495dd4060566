// Tokenizer::FromGguf: the tokenizer.ggml.* metadata written by llama.cpp's converters.
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "runtime/core/status.h"
#include "runtime/model/gguf.h"
#include "runtime/core/status.h"
#include "runtime/tokenizer/bpe_tokenizer.h"
#include "runtime/tokenizer/tokenizer.h"

namespace resa {
namespace {

// llama.cpp token types (tokenizer.ggml.token_type).
enum GgufTokenType : int64_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// Value of an optional id key: -1 when absent; InvalidArgument when not an id of the vocabulary.
absl::StatusOr<int32_t> OptionalId(const gguf::GgufFile& file, std::string_view key,
                                   size_t vocab_size) {
  if (file.Find(key) == nullptr) return -1;
  RESA_ASSIGN_OR_RETURN(const int64_t id, file.GetInt(key));
  if (id < 0 || static_cast<uint64_t>(id) >= vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        AsAbsl(key), " = ", id, " is outside the vocabulary (", vocab_size, " tokens)"));
  }
  return static_cast<int32_t>(id);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const gguf::GgufFile& file,
                                                const GgufTokenizerOptions& options) {
  if (file.Find("tokenizer.ggml.model") == nullptr) {
    return absl::FailedPreconditionError("the file has no tokenizer (no tokenizer.ggml.model)");
  }
  RESA_ASSIGN_OR_RETURN(const std::string model, file.GetString("tokenizer.ggml.model"));
  if (model != "gpt2") {
    return absl::UnimplementedError(absl::StrCat(
        "tokenizer.ggml.model '", model,
        "' is not supported; only 'gpt2' (byte-level BPE) tokenizers are implemented"));
  }
  std::string pre_name = options.pre_tokenizer;
  if (pre_name.empty()) {
    pre_name = "default";  // what llama.cpp assumes for files without the key
    if (file.Find("tokenizer.ggml.pre") != nullptr) {
      RESA_ASSIGN_OR_RETURN(pre_name, file.GetString("tokenizer.ggml.pre"));
    }
  }
  auto preset = tok::PresetForGgufName(pre_name);
  if (!preset.ok()) return Annotate(preset.status(), "tokenizer.ggml.pre");

  tok::TokenizerSpec spec;
  spec.source = file.path();
  spec.pre_tokenizer = std::move(preset->pre_tokenizer);
  spec.nfc = preset->nfc;
  spec.bpe.ignore_merges = preset->ignore_merges;

  RESA_ASSIGN_OR_RETURN(spec.id_to_token, file.GetStringArray("tokenizer.ggml.tokens"));
  const size_t n = spec.id_to_token.size();
  if (n == 0 || static_cast<int64_t>(n) > tok::kMaxVocabSize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tokenizer.ggml.tokens has ", n, " entries (expected 1..", tok::kMaxVocabSize, ")"));
  }
  std::vector<int64_t> types(n, kNormal);
  if (file.Find("tokenizer.ggml.token_type") != nullptr) {
    RESA_ASSIGN_OR_RETURN(types, file.GetIntArray("tokenizer.ggml.token_type"));
    if (types.size() != n) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.ggml.token_type has ", types.size(),
                                                     " entries for ", n, " tokens"));
    }
  }
  spec.token_to_id.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    // Later duplicates win, as in llama.cpp's token_to_id.
    spec.token_to_id[spec.id_to_token[i]] = static_cast<int32_t>(i);
    if (types[i] == kControl || types[i] == kUserDefined) {
      tok::AddedToken a;
      a.id = static_cast<int32_t>(i);
      a.content = spec.id_to_token[i];
      a.special = types[i] == kControl;
      if (!a.content.empty()) spec.added_tokens.push_back(std::move(a));
    }
  }

  RESA_ASSIGN_OR_RETURN(const std::vector<std::string> merges,
                        file.GetStringArray("tokenizer.ggml.merges"));
  spec.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string& m = merges[i];
    const size_t space = m.size() > 1 ? m.find(' ', 1) : std::string::npos;
    if (space == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer.ggml.merges[", i, "] = '", m, "' is not 'left right'"));
    }
    spec.merges.emplace_back(m.substr(0, space), m.substr(space + 1));
  }

  RESA_ASSIGN_OR_RETURN(spec.bos_id, OptionalId(file, "tokenizer.ggml.bos_token_id", n));
  RESA_ASSIGN_OR_RETURN(spec.eos_id, OptionalId(file, "tokenizer.ggml.eos_token_id", n));
  RESA_ASSIGN_OR_RETURN(spec.pad_id, OptionalId(file, "tokenizer.ggml.padding_token_id", n));
  for (std::string_view key : {"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    RESA_ASSIGN_OR_RETURN(const int32_t id, OptionalId(file, key, n));
    if (id >= 0) spec.extra_stop_ids.push_back(id);
  }
  if (file.Find("tokenizer.ggml.add_bos_token") != nullptr) {
    RESA_ASSIGN_OR_RETURN(spec.add_bos, file.GetBool("tokenizer.ggml.add_bos_token"));
  }
  if (file.Find("tokenizer.chat_template") != nullptr) {
    RESA_ASSIGN_OR_RETURN(spec.chat_template, file.GetString("tokenizer.chat_template"));
  }
  return tok::BuildTokenizer(std::move(spec));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const gguf::GgufFile& file) {
  return FromGguf(file, GgufTokenizerOptions{});
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(
    const gguf::GgufFile& file, const GgufTokenizerOptions& options) {
  auto t = Load(file, options);
  if (!t.ok()) return Annotate(t.status(), absl::StrCat("tokenizer of ", file.path()));
  return t;
}

}  // namespace resa
