// Byte-level BPE tokenizer (GPT-2 family: SmolLM2, Qwen2, Llama 3), built from GGUF metadata or
// from a Hugging Face tokenizer.json, plus the ChatML chat template of the instruct models.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace resa {

namespace gguf {
class GgufFile;
}

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

// Overrides for FromGguf.
struct GgufTokenizerOptions {
  // Replaces tokenizer.ggml.pre when non-empty (files converted with a wrong or missing name).
  std::string pre_tokenizer;
};

struct EncodeOptions {
  bool add_bos = false;       // prepend BOS when the model defines one
  bool parse_special = true;  // "<|im_start|>" etc. in the text become their special ids
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // From GGUF metadata (tokenizer.ggml.*: model "gpt2", pre-tokenizer name, tokens, token types,
  // merges, special ids, chat template).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const gguf::GgufFile& file);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const gguf::GgufFile& file,
                                                             const GgufTokenizerOptions& options);
  // From a tokenizer.json file; tokenizer_config.json beside it (if present) supplies the chat
  // template and BOS/EOS settings.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJsonFile(const std::string& path);
  // From tokenizer.json text (fuzzing, tests). `source` names it in errors.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJsonText(std::string_view json,
                                                                 std::string_view source);

  // InvalidArgument (with the byte offset) when `text` is not valid UTF-8.
  virtual absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                                      const EncodeOptions& options = {}) const = 0;
  // Concatenated bytes of the tokens (special tokens included unless skip_special). May end in
  // the middle of a UTF-8 character; see StreamDecoder for streaming. Ids outside the vocabulary
  // contribute nothing.
  virtual std::string Decode(std::span<const int32_t> ids, bool skip_special = false) const = 0;
  // Raw bytes of one token (an added token's content as is); empty for ids outside the
  // vocabulary.
  virtual std::string TokenBytes(int32_t id) const = 0;

  // Id of a token given its vocabulary text (the byte-level form for ordinary tokens, e.g.
  // "Ġthe"; the literal content for added tokens such as "<|im_end|>"), or -1.
  virtual int32_t TokenId(std::string_view token_text) const = 0;

  virtual int vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 when none
  virtual int32_t eos_id() const = 0;  // -1 when none
  // Whether the model asks for BOS in front of every prompt (tokenizer.ggml.add_bos_token,
  // add_bos_token in tokenizer_config.json); callers pass it as EncodeOptions::add_bos.
  virtual bool add_bos_token() const = 0;
  virtual bool IsSpecial(int32_t id) const = 0;
  // Ids that end generation: EOS plus the chat end-of-turn token ("<|im_end|>") when present.
  virtual std::vector<int32_t> StopIds() const = 0;
  // ChatML rendering of `messages` (with the template's default system prompt when the template
  // has one and the first message is not a system message), ending with the assistant prompt
  // when add_generation_prompt. FailedPrecondition when the model has no chat template this code
  // understands.
  virtual absl::StatusOr<std::string> ApplyChatTemplate(std::span<const ChatMessage> messages,
                                                        bool add_generation_prompt) const = 0;
};

// Turns a token stream into text pieces that are always whole UTF-8 characters: bytes of a
// character split across tokens are held back until it completes.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok, bool skip_special = true)
      : tok_(tok), skip_special_(skip_special) {}
  std::string Push(int32_t id);
  // Whatever is still held back (an incomplete character at the end), as is.
  std::string Flush();

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  std::string pending_;
};

// The chat template applied to `messages` and encoded so that the template's markers become
// their special tokens while every message's content is encoded as plain text: a user who types
// "<|im_start|>" gets those characters, never a control token. Errors as ApplyChatTemplate and
// Encode (InvalidArgument for content that is not UTF-8).
absl::StatusOr<std::vector<int32_t>> EncodeChat(const Tokenizer& tokenizer,
                                                std::span<const ChatMessage> messages,
                                                bool add_generation_prompt);

}  // namespace resa
