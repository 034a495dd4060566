#include "runtime/tokenizer/unicode.h"

#include <string>

#include "gtest/gtest.h"

namespace resa::tok {
namespace {

constexpr size_t kNpos = std::string_view::npos;

TEST(FindInvalidUtf8, AcceptsWellFormedText) {
  EXPECT_EQ(FindInvalidUtf8(""), kNpos);
  EXPECT_EQ(FindInvalidUtf8("plain ascii\n\t"), kNpos);
  EXPECT_EQ(FindInvalidUtf8(std::string("nul\0inside", 10)), kNpos);
  EXPECT_EQ(FindInvalidUtf8("caf\xc3\xa9 \xe4\xb8\xad \xf0\x9f\xa6\x80"), kNpos);  // é 中 🦀
  EXPECT_EQ(FindInvalidUtf8("\xf4\x8f\xbf\xbf"), kNpos);                           // U+10FFFF
}

TEST(FindInvalidUtf8, ReportsTheFirstBadByte) {
  EXPECT_EQ(FindInvalidUtf8("\xff"), 0u);
  EXPECT_EQ(FindInvalidUtf8("ab\x80"), 2u);                // stray continuation byte
  EXPECT_EQ(FindInvalidUtf8("abc\xc3"), 3u);               // truncated at the end
  EXPECT_EQ(FindInvalidUtf8("a\xc3z"), 1u);                // lead byte without continuation
  EXPECT_EQ(FindInvalidUtf8("x\xc0\xaf"), 1u);             // overlong '/'
  EXPECT_EQ(FindInvalidUtf8("\xe0\x80\xaf"), 0u);          // overlong, 3 bytes
  EXPECT_EQ(FindInvalidUtf8("ok \xed\xa0\x80"), 3u);       // UTF-16 surrogate U+D800
  EXPECT_EQ(FindInvalidUtf8("\xf4\x90\x80\x80"), 0u);      // above U+10FFFF
  EXPECT_EQ(FindInvalidUtf8("\xc3\xa9\xf0\x9f\xa6"), 2u);  // truncated emoji after é
}

TEST(CompleteUtf8Prefix, HoldsBackOnlyATruncatedCharacter) {
  EXPECT_EQ(CompleteUtf8Prefix(""), 0u);
  EXPECT_EQ(CompleteUtf8Prefix("abc"), 3u);
  EXPECT_EQ(CompleteUtf8Prefix("a\xf0"), 1u);
  EXPECT_EQ(CompleteUtf8Prefix("a\xf0\x9f"), 1u);
  EXPECT_EQ(CompleteUtf8Prefix("a\xf0\x9f\xa6"), 1u);
  EXPECT_EQ(CompleteUtf8Prefix("a\xf0\x9f\xa6\x80"), 5u);
  EXPECT_EQ(CompleteUtf8Prefix("\xc3"), 0u);
  EXPECT_EQ(CompleteUtf8Prefix("\xe4\xb8"), 0u);
  // Ill-formed bytes can never complete, so they are not held back.
  EXPECT_EQ(CompleteUtf8Prefix("a\xff"), 2u);
  EXPECT_EQ(CompleteUtf8Prefix("a\x80"), 2u);
  EXPECT_EQ(CompleteUtf8Prefix("a\xe0\x80"), 3u);  // E0 needs A0..BF next
  EXPECT_EQ(CompleteUtf8Prefix("a\xed\xa0"), 3u);  // surrogate
  EXPECT_EQ(CompleteUtf8Prefix("a\xf4\x90"), 3u);  // above U+10FFFF
  EXPECT_EQ(CompleteUtf8Prefix("a\xc3z"), 3u);
}

TEST(ByteLevelMap, RoundTripsEveryByte) {
  const ByteLevelMap& m = ByteLevelMap::Get();
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  std::string text;
  m.Encode(all, &text);
  std::string back;
  ASSERT_TRUE(m.Decode(text, &back));
  EXPECT_EQ(back, all);
  EXPECT_EQ(m.CharOf(' '), "\xc4\xa0");   // Ġ
  EXPECT_EQ(m.CharOf('\n'), "\xc4\x8a");  // Ċ
  EXPECT_EQ(m.CharOf('a'), "a");
  EXPECT_EQ(m.CharOf(0xE9), "\xc3\xa9");  // printable Latin-1 maps to itself
}

TEST(ByteLevelMap, RejectsTextOutsideTheMap) {
  const ByteLevelMap& m = ByteLevelMap::Get();
  std::string out = "keep";
  EXPECT_FALSE(m.Decode("a b", &out));           // a raw space is not a mapped character
  EXPECT_FALSE(m.Decode("\xe4\xb8\xad", &out));  // 中
  EXPECT_FALSE(m.Decode("\xc1\xa1", &out));      // overlong 'a'
  EXPECT_EQ(out, "keep");
}

TEST(Nfc, ComposesAndKeepsAscii) {
  EXPECT_EQ(*NfcNormalize("abc"), "abc");
  EXPECT_EQ(*NfcNormalize("cafe\xcc\x81"), "caf\xc3\xa9");
  EXPECT_EQ(*NfcNormalize(std::string("a\0b", 3)), std::string("a\0b", 3));
  EXPECT_EQ(*NfcNormalize(""), "");
}

TEST(CharClasses, FollowUnicodeWhiteSpaceAndWord) {
  for (char32_t c : {U'\t', U'\n', U'\r', U' ', U'\u0085', U'\u00a0', U'\u2028', U'\u3000'}) {
    EXPECT_TRUE(IsWhiteSpace(c)) << static_cast<uint32_t>(c);
  }
  for (char32_t c : {U'a', U'\u180e', U'\u200b', U'\x1c'}) {
    EXPECT_FALSE(IsWhiteSpace(c)) << static_cast<uint32_t>(c);
  }
  EXPECT_TRUE(IsWordChar(U'_'));
  EXPECT_TRUE(IsWordChar(U'\u00e9'));
  EXPECT_TRUE(IsWordChar(U'\u4e2d'));
  EXPECT_TRUE(IsWordChar(U'\u0301'));  // combining mark
  EXPECT_FALSE(IsWordChar(U'-'));
  EXPECT_FALSE(IsWordChar(U' '));
}

}  // namespace
}  // namespace resa::tok
