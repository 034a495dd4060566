// Pre-tokenisation: splitting normalised text into the words that BPE encodes one at a time.
//
// A PreTokenizer is a sequence of steps, each applied to every piece the previous steps produced
// (so a regex never sees across an earlier split, as in Hugging Face's Sequence). A split step
// keeps both the regex matches and the gaps between them as pieces ("Isolated" behaviour) and
// drops empty ones. Regexes are PCRE2 (UTF, UCP, JIT when available) with \s rewritten to the
// Unicode White_Space set, so \p{L}, \p{N} and \s agree with Oniguruma as Hugging Face uses it.
#pragma once

#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace resa::tok {

// A compiled split pattern; immutable and safe to share between threads.
class SplitRegex {
 public:
  // `literal`: match `pattern` as a plain string. InvalidArgument (with the PCRE2 message and
  // offset) when the pattern does not compile.
  static absl::StatusOr<std::shared_ptr<const SplitRegex>> Compile(std::string_view pattern,
                                                                   bool literal);
  ~SplitRegex();
  SplitRegex(const SplitRegex&) = delete;
  SplitRegex& operator=(const SplitRegex&) = delete;

  // Appends to `out` the matches of the regex in `text` (valid UTF-8) and the non-empty gaps
  // between them, in order; empty matches produce nothing. The views point into `text`.
  absl::Status Split(std::string_view text, std::vector<std::string_view>* out) const;

  const std::string& pattern() const { return pattern_; }

 private:
  SplitRegex() = default;
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8
};

// Rewrites \s (and \S outside character classes) to explicit Unicode White_Space sets; PCRE2's
// own \s also matches U+180E. \S inside a class is left as is.
std::string RewriteWhitespaceClasses(std::string_view pattern);

class PreTokenizer {
 public:
  // Regex split (Split{pattern, Isolated}, Digits). Fails when the pattern does not compile.
  absl::Status AddSplit(std::string_view pattern, bool literal = false);
  // Byte-level step: optional prefix space, then (use_regex) the GPT-2 split. Must be the last
  // step: the pieces leave it as raw bytes that BPE maps through ByteLevelMap.
  absl::Status AddByteLevel(bool add_prefix_space, bool use_regex);

  bool has_byte_level() const { return has_byte_level_; }
  bool empty() const { return steps_.empty(); }

  // Appends the words of `text` (valid UTF-8) to `words`. Words point into `text` or into
  // strings appended to `arena` (prefix-space copies), which must outlive their use.
  absl::Status Split(std::string_view text, std::vector<std::string_view>* words,
                     std::deque<std::string>* arena) const;

 private:
  struct Step {
    std::shared_ptr<const SplitRegex> regex;  // null: no split in this step
    bool add_prefix_space = false;
  };
  std::vector<Step> steps_;
  bool has_byte_level_ = false;
};

// GPT-2's byte-level split (Hugging Face ByteLevel with use_regex).
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// What a GGUF `tokenizer.ggml.pre` name stands for: the pre-tokenizer plus the settings of the
// matching Hugging Face tokenizer.json that llama.cpp keys on the same name.
struct PreTokenizerPreset {
  PreTokenizer pre_tokenizer;
  bool nfc = false;            // tokenizer.json normalizer NFC (Qwen2)
  bool ignore_merges = false;  // BPE ignore_merges (Llama 3)
};

// Supported names: "default", "gpt2", "smollm", "qwen2", "llama-bpe" (also "llama3"). Others:
// InvalidArgument listing the supported names.
absl::StatusOr<PreTokenizerPreset> PresetForGgufName(std::string_view name);

}  // namespace resa::tok
