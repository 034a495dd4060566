#include "runtime/tokenizer/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/core/status.h"
#include "runtime/core/status.h"
#include "runtime/tokenizer/unicode.h"

namespace resa::tok {
namespace {

// Unicode White_Space as class members (usable inside [...]).
constexpr char kWhiteSpaceMembers[] =
    R"(\t-\r\x{20}\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000})";

constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

pcre2_code* Code(void* p) { return static_cast<pcre2_code*>(p); }

std::string Pcre2Message(int code) {
  PCRE2_UCHAR buf[256];
  if (pcre2_get_error_message(code, buf, sizeof(buf)) < 0) return absl::StrCat("error ", code);
  return std::string(reinterpret_cast<const char*>(buf));
}

}  // namespace

std::string RewriteWhitespaceClasses(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 64);
  bool in_class = false;
  size_t i = 0;
  while (i < p.size()) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char d = p[i + 1];
      if (d == 'Q') {  // \Q...\E is literal text
        const size_t end = p.find("\\E", i + 2);
        const size_t stop = end == std::string_view::npos ? p.size() : end + 2;
        out.append(p.substr(i, stop - i));
        i = stop;
        continue;
      }
      if (d == 's') {
        if (in_class) {
          out += kWhiteSpaceMembers;
        } else {
          absl::StrAppend(&out, "[", kWhiteSpaceMembers, "]");
        }
      } else if (d == 'S' && !in_class) {
        absl::StrAppend(&out, "[^", kWhiteSpaceMembers, "]");
      } else {
        out.append(p.substr(i, 2));
      }
      i += 2;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out.push_back(c);
      ++i;
      if (i < p.size() && p[i] == '^') out.push_back(p[i++]);
      if (i < p.size() && p[i] == ']') out.push_back(p[i++]);  // literal ']' first in a class
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // [:alpha:]
      const size_t end = p.find(":]", i + 2);
      if (end != std::string_view::npos) {
        out.append(p.substr(i, end + 2 - i));
        i = end + 2;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out.push_back(c);
    ++i;
  }
  return out;
}

absl::StatusOr<std::shared_ptr<const SplitRegex>> SplitRegex::Compile(std::string_view pattern,
                                                                      bool literal) {
  std::shared_ptr<SplitRegex> re(new SplitRegex());
  re->pattern_ = std::string(pattern);
  const std::string source = literal ? std::string(pattern) : RewriteWhitespaceClasses(pattern);
  // Oniguruma (Ruby syntax), which Hugging Face uses, anchors ^ and $ at line boundaries.
  uint32_t options = PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK | PCRE2_MULTILINE;
  if (literal) options = PCRE2_UTF | PCRE2_NO_UTF_CHECK | PCRE2_LITERAL;
  if (FindInvalidUtf8(source) != std::string_view::npos) {
    return absl::InvalidArgumentError("split pattern is not valid UTF-8");
  }
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(source.data()), source.size(),
                                   options, &error, &offset, nullptr);
  if (code == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("split pattern does not compile at offset ",
                                                   offset, ": ", Pcre2Message(error)));
  }
  re->code_ = code;
  // JIT is an optimisation only: without it (unsupported CPU, no executable memory) the
  // interpreter gives the same matches.
  (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  return std::shared_ptr<const SplitRegex>(std::move(re));
}

SplitRegex::~SplitRegex() {
  if (code_ != nullptr) pcre2_code_free(Code(code_));
}

absl::Status SplitRegex::Split(std::string_view text, std::vector<std::string_view>* out) const {
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
      pcre2_match_data_create(1, nullptr), &pcre2_match_data_free);
  if (md == nullptr) return absl::ResourceExhaustedError("pcre2_match_data_create failed");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;   // where the next search starts
  size_t prev = 0;  // end of the last piece emitted
  while (pos <= text.size()) {
    int rc =
        pcre2_match(Code(code_), subject, text.size(), pos, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      // The interpreter keeps its backtracking state on the heap: slower, no stack limit.
      rc = pcre2_match(Code(code_), subject, text.size(), pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                       md.get(), nullptr);
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat("split regex failed at byte ", pos, ": ", Pcre2Message(rc)));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
    const size_t start = ov[0];
    const size_t end = ov[1];
    if (start >= end) {  // empty match (or \K trickery): no piece, move on one character
      if (end >= text.size()) break;
      pos = end + Utf8SeqLen(static_cast<uint8_t>(text[end]));
      continue;
    }
    if (start > prev) out->push_back(text.substr(prev, start - prev));
    out->push_back(text.substr(start, end - start));
    prev = pos = end;
  }
  if (prev < text.size()) out->push_back(text.substr(prev));
  return absl::OkStatus();
}

absl::Status PreTokenizer::AddSplit(std::string_view pattern, bool literal) {
  if (has_byte_level_) {
    return absl::InvalidArgumentError("a split after the ByteLevel pre-tokenizer is not supported");
  }
  RESA_ASSIGN_OR_RETURN(auto re, SplitRegex::Compile(pattern, literal));
  steps_.push_back(Step{std::move(re), false});
  return absl::OkStatus();
}

absl::Status PreTokenizer::AddByteLevel(bool add_prefix_space, bool use_regex) {
  if (has_byte_level_) {
    return absl::InvalidArgumentError("more than one ByteLevel pre-tokenizer");
  }
  Step step;
  step.add_prefix_space = add_prefix_space;
  if (use_regex) {
    RESA_ASSIGN_OR_RETURN(step.regex, SplitRegex::Compile(kGpt2Pattern, false));
  }
  steps_.push_back(std::move(step));
  has_byte_level_ = true;
  return absl::OkStatus();
}

absl::Status PreTokenizer::Split(std::string_view text, std::vector<std::string_view>* words,
                                 std::deque<std::string>* arena) const {
  if (text.empty()) return absl::OkStatus();
  std::vector<std::string_view> cur{text};
  std::vector<std::string_view> next;
  for (const Step& step : steps_) {
    next.clear();
    for (std::string_view piece : cur) {
      if (step.add_prefix_space && piece.front() != ' ') {
        arena->push_back(absl::StrCat(" ", AsAbsl(piece)));
        piece = arena->back();
      }
      if (step.regex == nullptr) {
        next.push_back(piece);
      } else {
        RESA_RETURN_IF_ERROR(step.regex->Split(piece, &next));
      }
    }
    cur.swap(next);
  }
  words->insert(words->end(), cur.begin(), cur.end());
  return absl::OkStatus();
}

absl::StatusOr<PreTokenizerPreset> PresetForGgufName(std::string_view name) {
  PreTokenizerPreset preset;
  PreTokenizer& pre = preset.pre_tokenizer;
  if (name == "gpt2") {
    RESA_RETURN_IF_ERROR(pre.AddByteLevel(false, true));
  } else if (name == "smollm") {
    // Digits(individual_digits) then ByteLevel, as in SmolLM2's tokenizer.json.
    RESA_RETURN_IF_ERROR(pre.AddSplit(R"(\p{N})"));
    RESA_RETURN_IF_ERROR(pre.AddByteLevel(false, true));
  } else if (name == "qwen2") {
    RESA_RETURN_IF_ERROR(pre.AddSplit(kQwen2Pattern));
    RESA_RETURN_IF_ERROR(pre.AddByteLevel(false, false));
    preset.nfc = true;
  } else if (name == "llama-bpe" || name == "llama3") {
    RESA_RETURN_IF_ERROR(pre.AddSplit(kLlama3Pattern));
    RESA_RETURN_IF_ERROR(pre.AddByteLevel(false, false));
    preset.ignore_merges = true;
  } else if (name == "default") {
    // llama.cpp's fallback for BPE vocabularies without a known pre-tokenizer.
    RESA_RETURN_IF_ERROR(pre.AddSplit(R"([\p{P}\$\+<=>\^~\|]+)"));
    RESA_RETURN_IF_ERROR(pre.AddSplit(kGpt2Pattern));
    RESA_RETURN_IF_ERROR(pre.AddSplit(R"(\p{N}+)"));
    RESA_RETURN_IF_ERROR(pre.AddSplit("[0-9][0-9][0-9]"));
    RESA_RETURN_IF_ERROR(pre.AddByteLevel(false, false));
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported pre-tokenizer '", AsAbsl(name),
                     "'; supported: default, gpt2, smollm, qwen2, llama-bpe (llama3)"));
  }
  return preset;
}

}  // namespace resa::tok
