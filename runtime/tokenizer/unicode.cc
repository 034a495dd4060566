#include "runtime/tokenizer/unicode.h"

#include <cstdlib>
#include <memory>

#include "absl/status/status.h"
#include "utf8proc.h"

namespace resa::tok {
namespace {

bool IsCont(uint8_t b) { return (b & 0xC0) == 0x80; }

// UTF-8 encoding of code point `c` (< 0x800 here) into `out`; returns its length.
uint8_t EncodeSmall(char32_t c, std::array<char, 2>& out) {
  if (c < 0x80) {
    out[0] = static_cast<char>(c);
    return 1;
  }
  out[0] = static_cast<char>(0xC0 | (c >> 6));
  out[1] = static_cast<char>(0x80 | (c & 0x3F));
  return 2;
}

}  // namespace

size_t Utf8SeqLen(uint8_t lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 1;
}

size_t FindInvalidUtf8(std::string_view s) {
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    utf8proc_int32_t cp = 0;
    const utf8proc_ssize_t len = utf8proc_iterate(p + i, static_cast<utf8proc_ssize_t>(n - i), &cp);
    if (len <= 0 || cp < 0) return i;
    i += static_cast<size_t>(len);
  }
  return std::string_view::npos;
}

size_t CompleteUtf8Prefix(std::string_view s) {
  const size_t n = s.size();
  // An incomplete character at the end has its lead byte among the last three bytes.
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const size_t start = n - back;
    const auto lead = static_cast<uint8_t>(s[start]);
    if (IsCont(lead)) continue;
    const size_t need = Utf8SeqLen(lead);
    if (need <= back) return n;  // ASCII, invalid lead, or a complete sequence
    // Held back only if the bytes so far can still become a well-formed sequence.
    for (size_t k = start + 1; k < n; ++k) {
      if (!IsCont(static_cast<uint8_t>(s[k]))) return n;
    }
    if (back >= 2) {
      const auto second = static_cast<uint8_t>(s[start + 1]);
      if ((lead == 0xE0 && second < 0xA0) || (lead == 0xED && second > 0x9F) ||
          (lead == 0xF0 && second < 0x90) || (lead == 0xF4 && second > 0x8F)) {
        return n;
      }
    }
    return start;
  }
  return n;
}

char32_t DecodeUtf8At(std::string_view s, size_t i, size_t* len) {
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
  utf8proc_int32_t cp = 0;
  const utf8proc_ssize_t l =
      utf8proc_iterate(p + i, static_cast<utf8proc_ssize_t>(s.size() - i), &cp);
  if (l <= 0 || cp < 0) {
    *len = 1;
    return static_cast<char32_t>(p[i]);
  }
  *len = static_cast<size_t>(l);
  return static_cast<char32_t>(cp);
}

char32_t DecodeUtf8Before(std::string_view s, size_t end, size_t* len) {
  size_t start = end - 1;
  while (start > 0 && end - start < 4 && IsCont(static_cast<uint8_t>(s[start]))) --start;
  size_t l = 0;
  const char32_t c = DecodeUtf8At(s, start, &l);
  if (start + l != end) {
    *len = 1;
    return static_cast<uint8_t>(s[end - 1]);
  }
  *len = l;
  return c;
}

absl::StatusOr<std::string> NfcNormalize(std::string_view s) {
  bool ascii = true;
  for (char c : s) {
    if (static_cast<uint8_t>(c) >= 0x80) {
      ascii = false;
      break;
    }
  }
  if (ascii) return std::string(s);
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(
      reinterpret_cast<const utf8proc_uint8_t*>(s.data()), static_cast<utf8proc_ssize_t>(s.size()),
      &out, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> owned(out, &std::free);
  if (n < 0) {
    return absl::InternalError(std::string("NFC normalisation failed: ") + utf8proc_errmsg(n));
  }
  return std::string(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
}

bool IsWhiteSpace(char32_t c) {
  if (c <= 0x20) return c == 0x20 || (c >= 0x09 && c <= 0x0D);
  if (c < 0x85) return false;
  return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
         c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

bool IsWordChar(char32_t c) {
  if (c < 0x80) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  }
  if (c == 0x200C || c == 0x200D) return true;
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

const ByteLevelMap& ByteLevelMap::Get() {
  static const ByteLevelMap* const kMap = new ByteLevelMap();
  return *kMap;
}

ByteLevelMap::ByteLevelMap() {
  byte_of_.fill(-1);
  // Printable Latin-1 bytes ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF) stand for themselves;
  // the remaining 68 bytes take U+0100.. in byte order.
  auto printable = [](int b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  };
  char32_t next = 0x100;
  for (int b = 0; b < 256; ++b) {
    const char32_t c = printable(b) ? static_cast<char32_t>(b) : next++;
    char_len_[b] = EncodeSmall(c, chars_[b]);
    byte_of_[c] = static_cast<int16_t>(b);
  }
}

void ByteLevelMap::Encode(std::string_view bytes, std::string* out) const {
  for (char ch : bytes) {
    const auto b = static_cast<uint8_t>(ch);
    out->append(chars_[b].data(), char_len_[b]);
  }
}

bool ByteLevelMap::Decode(std::string_view text, std::string* out) const {
  const size_t old_size = out->size();
  size_t i = 0;
  while (i < text.size()) {
    const auto b0 = static_cast<uint8_t>(text[i]);
    char32_t c;
    if (b0 < 0x80) {
      c = b0;
      i += 1;
    } else if ((b0 & 0xE0) == 0xC0 && i + 1 < text.size() &&
               IsCont(static_cast<uint8_t>(text[i + 1]))) {
      c = (static_cast<char32_t>(b0 & 0x1F) << 6) | (static_cast<uint8_t>(text[i + 1]) & 0x3F);
      i += 2;
      if (c < 0x80) {  // overlong
        out->resize(old_size);
        return false;
      }
    } else {
      out->resize(old_size);
      return false;
    }
    if (c >= byte_of_.size() || byte_of_[c] < 0) {
      out->resize(old_size);
      return false;
    }
    out->push_back(static_cast<char>(byte_of_[c]));
  }
  return true;
}

}  // namespace resa::tok
