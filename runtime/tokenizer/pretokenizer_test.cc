#include "runtime/tokenizer/pretokenizer.h"

#include <deque>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace resa::tok {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::vector<std::string> Words(const PreTokenizer& pre, std::string_view text) {
  std::vector<std::string_view> words;
  std::deque<std::string> arena;
  EXPECT_TRUE(pre.Split(text, &words, &arena).ok());
  return {words.begin(), words.end()};
}

std::vector<std::string> Words(std::string_view preset, std::string_view text) {
  auto p = PresetForGgufName(preset);
  EXPECT_TRUE(p.ok()) << p.status();
  return Words(p->pre_tokenizer, text);
}

// Expected pieces below are what Hugging Face tokenizers 0.23 gives for the same configuration
// (see testdata/make_reference.py for the configurations).
TEST(Presets, SmolLmSplitsDigitsThenGpt2) {
  EXPECT_THAT(Words("smollm", "Hello world  12345!!"),
              ElementsAre("Hello", " world", "  ", "1", "2", "3", "4", "5", "!!"));
  EXPECT_THAT(Words("smollm", "I'M it's  \n\n x"),
              ElementsAre("I", "'", "M", " it", "'s", "  \n\n", " x"));
  EXPECT_THAT(Words("smollm", "  x\t\ty \r\n\r\n"),
              ElementsAre(" ", " x", "\t", "\t", "y", " \r\n\r\n"));
}

TEST(Presets, Gpt2KeepsNumbersTogether) {
  EXPECT_THAT(Words("gpt2", "Hello world  12345!!"),
              ElementsAre("Hello", " world", " ", " 12345", "!!"));
}

TEST(Presets, WhitespaceIsUnicodeWhiteSpaceNotPcreSpace) {
  // U+00A0 is White_Space; U+180E is not (PCRE2's own \s would take it).
  EXPECT_THAT(Words("gpt2", "a\u00a0\u00a0b !\u180e! \u4e2d\u6587\u5b57 \U0001F980\U0001F980"),
              ElementsAre("a", "\u00a0", "\u00a0", "b", " !\u180e!", " \u4e2d\u6587\u5b57",
                          " \U0001F980\U0001F980"));
  EXPECT_THAT(Words("qwen2", "a\u00a0\u00a0b !\u180e! \u4e2d\u6587\u5b57 \U0001F980\U0001F980"),
              ElementsAre("a", "\u00a0", "\u00a0b", " !\u180e!", " \u4e2d\u6587\u5b57",
                          " \U0001F980\U0001F980"));
}

TEST(Presets, Qwen2IsCaseInsensitiveAndSplitsSingleDigits) {
  EXPECT_THAT(Words("qwen2", "Hello world  12345!!"),
              ElementsAre("Hello", " world", " ", " ", "1", "2", "3", "4", "5", "!!"));
  EXPECT_THAT(Words("qwen2", "I'M it's  \n\n x"),
              ElementsAre("I", "'M", " it", "'s", "  \n\n", " x"));
  EXPECT_THAT(Words("qwen2", "  x\t\ty \r\n\r\n"),
              ElementsAre(" ", " x", "\t", "\ty", " \r\n\r\n"));
  // Unicode case folding: U+017F (long s) matches 's'.
  EXPECT_THAT(Words("qwen2", "it'\u017f"), ElementsAre("it", "'\u017f"));
  EXPECT_THAT(Words("smollm", "it'\u017f"), ElementsAre("it", "'", "\u017f"));
}

TEST(Presets, Llama3GroupsDigitsByThree) {
  EXPECT_THAT(Words("llama-bpe", "Hello world  12345!!"),
              ElementsAre("Hello", " world", " ", " ", "123", "45", "!!"));
  auto p = PresetForGgufName("llama-bpe");
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->ignore_merges);
  EXPECT_FALSE(p->nfc);
  EXPECT_TRUE(PresetForGgufName("qwen2")->nfc);
}

TEST(Presets, DefaultSplitsPunctuationFirst) {
  EXPECT_THAT(Words("default", "a+b=1234"), ElementsAre("a", "+", "b", "=", "123", "4"));
}

TEST(Presets, UnknownNameListsTheSupportedOnes) {
  auto p = PresetForGgufName("deepseek-llm");
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(p.status().message(), HasSubstr("deepseek-llm"));
  EXPECT_THAT(p.status().message(), HasSubstr("smollm"));
  EXPECT_THAT(p.status().message(), HasSubstr("qwen2"));
}

TEST(SplitRegex, KeepsGapsAndDropsEmptyMatches) {
  auto re = SplitRegex::Compile("x*", false);
  ASSERT_TRUE(re.ok()) << re.status();
  std::vector<std::string_view> out;
  ASSERT_TRUE((*re)->Split("abxxc\xc3\xa9x", &out).ok());
  EXPECT_THAT(out, ElementsAre("ab", "xx", "c\xc3\xa9", "x"));
}

TEST(SplitRegex, LiteralPatterns) {
  auto re = SplitRegex::Compile("a.b", true);
  ASSERT_TRUE(re.ok()) << re.status();
  std::vector<std::string_view> out;
  ASSERT_TRUE((*re)->Split("xa.byaxb", &out).ok());
  EXPECT_THAT(out, ElementsAre("x", "a.b", "yaxb"));
}

TEST(SplitRegex, BadPatternIsAnError) {
  auto re = SplitRegex::Compile("(unclosed", false);
  ASSERT_FALSE(re.ok());
  EXPECT_EQ(re.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(re.status().message(), HasSubstr("offset"));
}

TEST(SplitRegex, HandlesMegabyteRuns) {
  auto p = PresetForGgufName("qwen2");
  ASSERT_TRUE(p.ok());
  for (const std::string& text : {std::string(1 << 20, ' '), std::string(1 << 20, 'a'),
                                  std::string(1 << 20, '!'), std::string(1 << 20, '\n')}) {
    const auto words = Words(p->pre_tokenizer, text);
    size_t total = 0;
    for (const auto& w : words) total += w.size();
    EXPECT_EQ(total, text.size());
  }
}

TEST(RewriteWhitespaceClasses, ReplacesBackslashS) {
  const std::string out = RewriteWhitespaceClasses(R"(\s+(?!\S)|[^\s\p{L}]|\\s|\Q\s\E|[\]\s])");
  EXPECT_EQ(out.find(R"(\s)"), out.find(R"(\\s)") + 1);  // only the escaped backslash remains
  EXPECT_NE(out.find(R"(\Q\s\E)"), std::string::npos);   // quoted text is left alone
  EXPECT_EQ(out.find(R"(\S)"), std::string::npos);
  EXPECT_NE(out.find(R"([^\t-\r)"), std::string::npos);
}

TEST(PreTokenizer, PrefixSpaceIsAddedPerPiece) {
  PreTokenizer pre;
  ASSERT_TRUE(pre.AddByteLevel(/*add_prefix_space=*/true, /*use_regex=*/true).ok());
  EXPECT_THAT(Words(pre, "hello world"), ElementsAre(" hello", " world"));
  EXPECT_THAT(Words(pre, " hi"), ElementsAre(" hi"));
  EXPECT_FALSE(pre.AddSplit("x").ok());  // nothing may follow ByteLevel
}

}  // namespace
}  // namespace resa::tok
