#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/tokenizer/test_util.h"
#include "runtime/tokenizer/tokenizer.h"
#include "runtime/tokenizer/unicode.h"

namespace resa::tok {
namespace {

using testing::MakeTokenizer;
using testing::TinyTokenizerJson;

TEST(StreamDecoder, HoldsBackAnEmojiSplitAcrossByteTokens) {
  // No merges: every byte is its own token, so U+1F980 arrives as four tokens.
  auto t = MakeTokenizer(TinyTokenizerJson({}));
  ASSERT_NE(t, nullptr);
  auto ids = t->Encode("a\U0001F980b");
  ASSERT_TRUE(ids.ok());
  ASSERT_EQ(ids->size(), 6u);
  StreamDecoder dec(*t);
  std::vector<std::string> pieces;
  for (int32_t id : *ids) pieces.push_back(dec.Push(id));
  EXPECT_EQ(pieces, (std::vector<std::string>{"a", "", "", "", "\U0001F980", "b"}));
  EXPECT_EQ(dec.Flush(), "");
}

TEST(StreamDecoder, FlushReturnsAnIncompleteTail) {
  auto t = MakeTokenizer(TinyTokenizerJson({}));
  ASSERT_NE(t, nullptr);
  StreamDecoder dec(*t);
  EXPECT_EQ(dec.Push('x'), "x");
  EXPECT_EQ(dec.Push(0xF0), "");
  EXPECT_EQ(dec.Push(0x9F), "");
  EXPECT_EQ(dec.Flush(), "\xf0\x9f");
  EXPECT_EQ(dec.Flush(), "");
  // A byte that can never start a character is passed on at once.
  EXPECT_EQ(dec.Push(0xFF), "\xff");
}

TEST(StreamDecoder, SkipsSpecialTokensByDefault) {
  auto t = MakeTokenizer(TinyTokenizerJson({}, {{"<|im_end|>"}}));
  ASSERT_NE(t, nullptr);
  const int32_t end = t->TokenId("<|im_end|>");
  StreamDecoder quiet(*t);
  EXPECT_EQ(quiet.Push(end), "");
  StreamDecoder verbose(*t, /*skip_special=*/false);
  EXPECT_EQ(verbose.Push(end), "<|im_end|>");
}

TEST(StreamDecoder, PiecesAreWholeCharactersAndAddUpToDecode) {
  auto t = MakeTokenizer(TinyTokenizerJson({{"\xe4", "\xb8"}, {"\xf0", "\x9f"}, {"\xb8", "\xad"}}));
  ASSERT_NE(t, nullptr);
  const std::string text =
      "mix \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\xa6\x80\xf0\x9f\x91\x8d \xc3\xa9!";
  auto ids = t->Encode(text);
  ASSERT_TRUE(ids.ok());
  StreamDecoder dec(*t);
  std::string joined;
  for (int32_t id : *ids) {
    const std::string piece = dec.Push(id);
    EXPECT_EQ(FindInvalidUtf8(piece), std::string_view::npos);
    joined += piece;
  }
  joined += dec.Flush();
  EXPECT_EQ(joined, t->Decode(*ids));
  EXPECT_EQ(joined, text);
}

}  // namespace
}  // namespace resa::tok
