// The Tokenizer implementation shared by the GGUF and tokenizer.json loaders: both fill a
// TokenizerSpec, and BuildTokenizer validates it once.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "runtime/tokenizer/added_tokens.h"
#include "runtime/tokenizer/bpe.h"
#include "runtime/tokenizer/pretokenizer.h"
#include "runtime/tokenizer/tokenizer.h"

namespace resa::tok {

// Ids must be below this (the largest real vocabularies are ~260K); it bounds what a hostile
// file can make us allocate.
inline constexpr int64_t kMaxVocabSize = 1 << 22;

struct TokenizerSpec {
  std::string source;  // file name for messages
  // Model vocabulary: id -> byte-level token text ("" for unused ids), and its inverse.
  std::vector<std::string> id_to_token;
  absl::flat_hash_map<std::string, int32_t> token_to_id;
  std::vector<std::pair<std::string, std::string>> merges;  // byte-level texts, rank order
  BpeModel::Options bpe;
  bool nfc = false;
  PreTokenizer pre_tokenizer;  // must contain a ByteLevel step
  // Added tokens; an id may also be a model token (its content then wins for decoding).
  std::vector<AddedToken> added_tokens;
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t pad_id = -1;
  bool add_bos = false;
  std::vector<int32_t> extra_stop_ids;  // e.g. GGUF eot/eom ids
  std::string chat_template;
};

// InvalidArgument when ids are out of range or the spec is inconsistent (callers add the file
// name).
absl::StatusOr<std::unique_ptr<Tokenizer>> BuildTokenizer(TokenizerSpec spec);

}  // namespace resa::tok
