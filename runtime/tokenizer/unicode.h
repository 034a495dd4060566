// Unicode helpers of the tokenizer: UTF-8 validation and scanning, NFC (utf8proc), the character
// classes Hugging Face tokenizers use around added tokens, and GPT-2's byte <-> character map.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace resa::tok {

// Offset of the first byte of `s` that does not begin a well-formed UTF-8 sequence (overlong
// forms, surrogates and code points above U+10FFFF are ill-formed), or npos when all of `s` is
// valid.
size_t FindInvalidUtf8(std::string_view s);

// Length of the longest prefix of `s` that does not end inside an incomplete UTF-8 character:
// only a truncated but otherwise well-formed sequence at the very end is held back; ill-formed
// bytes are never held back (they would never complete).
size_t CompleteUtf8Prefix(std::string_view s);

// Decodes the code point starting at s[i] (s must be valid UTF-8) and its length in bytes.
char32_t DecodeUtf8At(std::string_view s, size_t i, size_t* len);
// Code point that ends at s[end] (exclusive); s must be valid UTF-8 and end > 0.
char32_t DecodeUtf8Before(std::string_view s, size_t end, size_t* len);
// Length in bytes of the UTF-8 sequence whose lead byte is `lead` (1 for invalid leads).
size_t Utf8SeqLen(uint8_t lead);

// Unicode NFC of valid UTF-8 `s`. Internal error only when utf8proc fails.
absl::StatusOr<std::string> NfcNormalize(std::string_view s);

// White_Space property (what Rust's char::is_whitespace and Oniguruma's \s match).
bool IsWhiteSpace(char32_t c);
// Unicode \w of the Rust regex crate (letters, marks, decimal digits, connector punctuation,
// letter numbers, ZWJ/ZWNJ), approximated from the general category.
bool IsWordChar(char32_t c);

// GPT-2's reversible map from the 256 byte values to printable characters (printable Latin-1
// bytes map to themselves, the others to U+0100..U+0143), used by byte-level BPE vocabularies.
class ByteLevelMap {
 public:
  static const ByteLevelMap& Get();

  // UTF-8 of the character that stands for byte `b`.
  std::string_view CharOf(uint8_t b) const { return {chars_[b].data(), char_len_[b]}; }
  // Appends the byte-level text of raw `bytes` to `out`.
  void Encode(std::string_view bytes, std::string* out) const;
  // Appends the raw bytes that byte-level `text` stands for; false (and `out` unchanged) when
  // `text` is not valid UTF-8 or holds a character outside the map.
  bool Decode(std::string_view text, std::string* out) const;

 private:
  ByteLevelMap();
  std::array<std::array<char, 2>, 256> chars_{};
  std::array<uint8_t, 256> char_len_{};
  std::array<int16_t, 0x144> byte_of_{};  // code point -> byte, -1 when not in the map
};

}  // namespace resa::tok
