#include "runtime/tokenizer/bpe_tokenizer.h"

#include <algorithm>
#include <deque>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/core/status.h"
#include "runtime/core/status.h"
#include "runtime/tokenizer/chat_template.h"
#include "runtime/tokenizer/unicode.h"

namespace resa::tok {
namespace {

class BpeTokenizer final : public Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Create(TokenizerSpec spec);

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              const EncodeOptions& options) const override;
  std::string Decode(std::span<const int32_t> ids, bool skip_special) const override;
  std::string TokenBytes(int32_t id) const override {
    return InRange(id) ? id_bytes_[static_cast<size_t>(id)] : std::string();
  }
  int32_t TokenId(std::string_view token_text) const override;
  int vocab_size() const override { return static_cast<int>(id_bytes_.size()); }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }
  bool add_bos_token() const override { return add_bos_; }
  bool IsSpecial(int32_t id) const override {
    return InRange(id) && special_[static_cast<size_t>(id)] != 0;
  }
  std::vector<int32_t> StopIds() const override { return stop_ids_; }
  absl::StatusOr<std::string> ApplyChatTemplate(std::span<const ChatMessage> messages,
                                                bool add_generation_prompt) const override;

 private:
  BpeTokenizer() = default;
  bool InRange(int32_t id) const { return id >= 0 && static_cast<size_t>(id) < id_bytes_.size(); }
  // Appends the ids of text that holds no raw-matched added token.
  absl::Status EncodeText(std::string_view text, bool parse_special,
                          std::vector<int32_t>* out) const;
  // Appends the ids of normalised text free of added tokens.
  absl::Status EncodeWords(std::string_view text, std::vector<int32_t>* out) const;

  std::string source_;
  std::unique_ptr<BpeModel> bpe_;
  PreTokenizer pre_;
  bool nfc_ = false;
  std::deque<AddedToken> added_;             // stable addresses for the matchers
  std::deque<AddedToken> added_normalized_;  // normalized tokens with NFC content
  AddedTokenMatcher raw_matcher_;
  AddedTokenMatcher normalized_matcher_;
  absl::flat_hash_map<std::string, int32_t> added_by_content_;
  std::vector<std::string> id_bytes_;
  std::vector<uint8_t> special_;
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  bool add_bos_ = false;
  std::vector<int32_t> stop_ids_;
  absl::StatusOr<ChatMlTemplate> chat_template_;  // FailedPrecondition when unusable
};

absl::StatusOr<std::unique_ptr<Tokenizer>> BpeTokenizer::Create(TokenizerSpec spec) {
  std::unique_ptr<BpeTokenizer> t(new BpeTokenizer());
  t->source_ = spec.source;
  if (!spec.pre_tokenizer.has_byte_level()) {
    return absl::InvalidArgumentError(
        "byte-level BPE needs a ByteLevel pre-tokenizer step; this one has none");
  }
  if (static_cast<int64_t>(spec.id_to_token.size()) > kMaxVocabSize) {
    return absl::InvalidArgumentError(absl::StrCat("vocabulary of ", spec.id_to_token.size(),
                                                   " tokens exceeds the limit of ", kMaxVocabSize));
  }
  size_t vocab_size = spec.id_to_token.size();
  for (const auto& [text, id] : spec.token_to_id) {
    if (id < 0 || static_cast<size_t>(id) >= spec.id_to_token.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("token '", text, "' has id ", id, " outside the vocabulary"));
    }
  }
  for (const AddedToken& a : spec.added_tokens) {
    if (a.id < 0 || a.id >= kMaxVocabSize) {
      return absl::InvalidArgumentError(
          absl::StrCat("added token '", a.content, "' has invalid id ", a.id));
    }
    if (a.content.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("added token ", a.id, " has no content"));
    }
    vocab_size = std::max(vocab_size, static_cast<size_t>(a.id) + 1);
  }
  auto check_id = [&](int32_t id, std::string_view what) -> absl::Status {
    if (id < -1 || (id >= 0 && static_cast<size_t>(id) >= vocab_size)) {
      return absl::InvalidArgumentError(absl::StrCat(
          AsAbsl(what), " id ", id, " is outside the vocabulary (size ", vocab_size, ")"));
    }
    return absl::OkStatus();
  };
  RESA_RETURN_IF_ERROR(check_id(spec.bos_id, "BOS"));
  RESA_RETURN_IF_ERROR(check_id(spec.eos_id, "EOS"));
  RESA_RETURN_IF_ERROR(check_id(spec.pad_id, "padding"));
  RESA_RETURN_IF_ERROR(check_id(spec.bpe.unk_id, "unknown-token"));
  for (int32_t id : spec.extra_stop_ids) RESA_RETURN_IF_ERROR(check_id(id, "stop"));

  // Decoded bytes of every id: byte-level text mapped back to bytes; text outside the byte map
  // (possible in hand-made vocabularies) is kept as is, like Hugging Face's ByteLevel decoder.
  const ByteLevelMap& bytes = ByteLevelMap::Get();
  t->id_bytes_.resize(vocab_size);
  t->special_.assign(vocab_size, 0);
  for (size_t id = 0; id < spec.id_to_token.size(); ++id) {
    const std::string& text = spec.id_to_token[id];
    if (!bytes.Decode(text, &t->id_bytes_[id])) t->id_bytes_[id] = text;
  }
  // The last definition of an id or a content wins, as in Hugging Face's AddedVocabulary.
  for (AddedToken& a : spec.added_tokens) {
    t->id_bytes_[static_cast<size_t>(a.id)] = a.content;
    t->special_[static_cast<size_t>(a.id)] = a.special ? 1 : 0;
    t->added_by_content_[a.content] = a.id;
    t->added_.push_back(std::move(a));
  }
  std::vector<const AddedToken*> raw;
  std::vector<const AddedToken*> normalized;
  for (const AddedToken& a : t->added_) {
    if (t->added_by_content_[a.content] != a.id) continue;  // superseded
    if (a.normalized) {
      AddedToken n = a;
      if (spec.nfc) {
        RESA_ASSIGN_OR_RETURN(n.content, NfcNormalize(a.content));
      }
      t->added_normalized_.push_back(std::move(n));
      normalized.push_back(&t->added_normalized_.back());
    } else {
      raw.push_back(&a);
    }
  }
  t->raw_matcher_ = AddedTokenMatcher(std::move(raw));
  t->normalized_matcher_ = AddedTokenMatcher(std::move(normalized));

  RESA_ASSIGN_OR_RETURN(t->bpe_,
                        BpeModel::Create(std::move(spec.token_to_id), spec.merges, spec.bpe));
  t->pre_ = std::move(spec.pre_tokenizer);
  t->nfc_ = spec.nfc;
  t->bos_id_ = spec.bos_id;
  t->eos_id_ = spec.eos_id;
  t->add_bos_ = spec.add_bos && spec.bos_id >= 0;

  auto add_stop = [&](int32_t id) {
    if (id >= 0 && std::find(t->stop_ids_.begin(), t->stop_ids_.end(), id) == t->stop_ids_.end()) {
      t->stop_ids_.push_back(id);
    }
  };
  add_stop(t->eos_id_);
  for (int32_t id : spec.extra_stop_ids) add_stop(id);
  for (std::string_view name : {"<|im_end|>", "<|endoftext|>"}) {
    const int32_t id = t->TokenId(name);
    if (t->IsSpecial(id)) add_stop(id);
  }

  t->chat_template_ = ParseChatMlTemplate(spec.chat_template);
  return std::unique_ptr<Tokenizer>(std::move(t));
}

int32_t BpeTokenizer::TokenId(std::string_view token_text) const {
  auto it = added_by_content_.find(AsAbsl(token_text));
  if (it != added_by_content_.end()) return it->second;
  return bpe_->TokenId(token_text);
}

absl::StatusOr<std::vector<int32_t>> BpeTokenizer::Encode(std::string_view text,
                                                          const EncodeOptions& options) const {
  if (const size_t bad = FindInvalidUtf8(text); bad != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrFormat("text is not valid UTF-8: bad byte 0x%02x at byte offset %d",
                        static_cast<uint8_t>(text[bad]), bad));
  }
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (options.add_bos && bos_id_ >= 0) out.push_back(bos_id_);
  if (raw_matcher_.empty()) {
    RESA_RETURN_IF_ERROR(EncodeText(text, options.parse_special, &out));
    return out;
  }
  std::vector<AddedTokenMatcher::Piece> pieces;
  raw_matcher_.Split(text, options.parse_special, &pieces);
  for (const auto& piece : pieces) {
    if (piece.token != nullptr) {
      out.push_back(piece.token->id);
    } else {
      RESA_RETURN_IF_ERROR(EncodeText(piece.text, options.parse_special, &out));
    }
  }
  return out;
}

absl::Status BpeTokenizer::EncodeText(std::string_view text, bool parse_special,
                                      std::vector<int32_t>* out) const {
  std::string normalized;
  if (nfc_) {
    RESA_ASSIGN_OR_RETURN(normalized, NfcNormalize(text));
    text = normalized;
  }
  if (normalized_matcher_.empty()) return EncodeWords(text, out);
  std::vector<AddedTokenMatcher::Piece> pieces;
  normalized_matcher_.Split(text, parse_special, &pieces);
  for (const auto& piece : pieces) {
    if (piece.token != nullptr) {
      out->push_back(piece.token->id);
    } else {
      RESA_RETURN_IF_ERROR(EncodeWords(piece.text, out));
    }
  }
  return absl::OkStatus();
}

absl::Status BpeTokenizer::EncodeWords(std::string_view text, std::vector<int32_t>* out) const {
  std::vector<std::string_view> words;
  std::deque<std::string> arena;
  RESA_RETURN_IF_ERROR(pre_.Split(text, &words, &arena));
  for (std::string_view w : words) bpe_->EncodeWord(w, out);
  return absl::OkStatus();
}

std::string BpeTokenizer::Decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string out;
  for (int32_t id : ids) {
    if (!InRange(id) || (skip_special && special_[static_cast<size_t>(id)] != 0)) continue;
    out += id_bytes_[static_cast<size_t>(id)];
  }
  return out;
}

absl::StatusOr<std::string> BpeTokenizer::ApplyChatTemplate(std::span<const ChatMessage> messages,
                                                            bool add_generation_prompt) const {
  if (!chat_template_.ok()) {
    return Annotate(chat_template_.status(), absl::StrCat("chat template of ", source_));
  }
  return RenderChatMl(*chat_template_, messages, add_generation_prompt);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> BuildTokenizer(TokenizerSpec spec) {
  return BpeTokenizer::Create(std::move(spec));
}

}  // namespace resa::tok
