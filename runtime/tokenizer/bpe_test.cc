// Encoding and decoding with small hand-made vocabularies (no model file needed).
#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/tokenizer/test_util.h"
#include "runtime/tokenizer/tokenizer.h"

namespace resa::tok {
namespace {

using testing::Bl;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::MakeTokenizer;
using testing::TinyAdded;
using testing::TinyTokenizerJson;

std::vector<int32_t> Enc(const Tokenizer& t, std::string_view text, EncodeOptions o = {}) {
  auto ids = t.Encode(text, o);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

TEST(Bpe, MergesByRankNotByPosition) {
  // "b c" outranks "a b", so "abc" becomes a + bc, then abc.
  auto t = MakeTokenizer(TinyTokenizerJson({{"b", "c"}, {"a", "b"}, {"a", "bc"}}));
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(Enc(*t, "abc"), ElementsAre(t->TokenId("abc")));
  EXPECT_THAT(Enc(*t, "ab"), ElementsAre(t->TokenId("ab")));
  EXPECT_THAT(Enc(*t, "abcab"), ElementsAre(t->TokenId("abc"), t->TokenId("ab")));
}

TEST(Bpe, EqualRanksMergeLeftmostFirst) {
  auto t = MakeTokenizer(TinyTokenizerJson({{"a", "a"}}));
  ASSERT_NE(t, nullptr);
  const int32_t aa = t->TokenId("aa");
  EXPECT_THAT(Enc(*t, "aaa"), ElementsAre(aa, 'a'));
  EXPECT_THAT(Enc(*t, "aaaa"), ElementsAre(aa, aa));
}

TEST(Bpe, UnmergedBytesAreByteTokens) {
  auto t = MakeTokenizer(TinyTokenizerJson({}));
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(Enc(*t, "a \xc3\xa9"), ElementsAre('a', ' ', 0xC3, 0xA9));
  EXPECT_EQ(t->Decode(Enc(*t, "a \xc3\xa9")), "a \xc3\xa9");
  EXPECT_TRUE(Enc(*t, "").empty());
}

TEST(Bpe, IgnoreMergesTakesWholeWordTokens) {
  // "xyz" is in the vocabulary, but "y z" outranks "x y", so merging stops at x + yz.
  nlohmann::json j = TinyTokenizerJson({{"y", "z"}, {"x", "y"}, {"xy", "z"}});
  auto plain = MakeTokenizer(j);
  ASSERT_NE(plain, nullptr);
  EXPECT_THAT(Enc(*plain, "xyz"), ElementsAre('x', plain->TokenId("yz")));
  j["model"]["ignore_merges"] = true;
  auto ignoring = MakeTokenizer(j);
  ASSERT_NE(ignoring, nullptr);
  EXPECT_THAT(Enc(*ignoring, "xyz"), ElementsAre(ignoring->TokenId("xyz")));
}

TEST(Bpe, LongWordsAreFastAndExact) {
  auto t = MakeTokenizer(TinyTokenizerJson({{"a", "b"}, {"ab", "ab"}, {"abab", "abab"}}));
  ASSERT_NE(t, nullptr);
  std::string word;
  for (int i = 0; i < 100000; ++i) word += "ab";
  const auto start = std::chrono::steady_clock::now();
  const auto ids = Enc(*t, word);
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_EQ(ids.size(), 100000u / 4);
  EXPECT_EQ(ids[0], t->TokenId("abababab"));
  EXPECT_EQ(t->Decode(ids), word);
  EXPECT_LT(secs, 2.0) << "a 200 KB word should merge in O(n log n)";
}

TEST(Encode, InvalidUtf8IsAnErrorWithTheOffset) {
  auto t = MakeTokenizer(TinyTokenizerJson({}));
  ASSERT_NE(t, nullptr);
  auto ids = t->Encode("ok \xc3\xa9 \xff rest");
  ASSERT_FALSE(ids.ok());
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ids.status().message(), HasSubstr("offset 6"));
  EXPECT_THAT(ids.status().message(), HasSubstr("0xff"));
  EXPECT_FALSE(t->Encode("\xed\xa0\x80").ok());  // surrogate
}

TEST(AddedTokens, SpecialTokensAreMatchedLongestFirst) {
  auto t = MakeTokenizer(TinyTokenizerJson(
      {}, {{"<|im_start|>"}, {"<|im_end|>"}, {"<|im"}, {"<tool>", /*special=*/false}}));
  ASSERT_NE(t, nullptr);
  const int32_t start = t->TokenId("<|im_start|>");
  const int32_t end = t->TokenId("<|im_end|>");
  const int32_t im = t->TokenId("<|im");
  const int32_t tool = t->TokenId("<tool>");
  ASSERT_GE(start, 256);
  EXPECT_THAT(Enc(*t, "<|im_start|>hi<|im_end|>"), ElementsAre(start, 'h', 'i', end));
  EXPECT_THAT(Enc(*t, "<|im_x"), ElementsAre(im, '_', 'x'));
  EXPECT_THAT(Enc(*t, "<<|im_end|>>"), ElementsAre('<', end, '>'));
  // parse_special=false: special tokens are plain text, other added tokens still match.
  EXPECT_THAT(Enc(*t, "<|im_end|><tool>", {.parse_special = false}),
              ElementsAre('<', '|', 'i', 'm', '_', 'e', 'n', 'd', '|', '>', tool));
  EXPECT_TRUE(t->IsSpecial(start));
  EXPECT_FALSE(t->IsSpecial(tool));
  EXPECT_FALSE(t->IsSpecial('a'));
  EXPECT_FALSE(t->IsSpecial(-1));
  EXPECT_FALSE(t->IsSpecial(1 << 20));
}

TEST(AddedTokens, TextAroundAddedTokensIsPreTokenizedSeparately) {
  // The space before <|im_end|> cannot join a following word: it ends its own piece.
  auto t = MakeTokenizer(TinyTokenizerJson({{" ", "x"}}, {{"<|im_end|>"}}));
  ASSERT_NE(t, nullptr);
  const int32_t end = t->TokenId("<|im_end|>");
  EXPECT_THAT(Enc(*t, "a <|im_end|>x"), ElementsAre('a', ' ', end, 'x'));
  EXPECT_THAT(Enc(*t, "a x"), ElementsAre('a', t->TokenId(Bl(" x"))));
}

TEST(AddedTokens, StripAndSingleWord) {
  auto t =
      MakeTokenizer(TinyTokenizerJson({}, {{"<mask>", true, /*lstrip=*/true, /*rstrip=*/false},
                                           {"<sep>", true, false, /*rstrip=*/true},
                                           {"cat", false, false, false, /*single_word=*/true}}));
  ASSERT_NE(t, nullptr);
  const int32_t mask = t->TokenId("<mask>");
  const int32_t sep = t->TokenId("<sep>");
  const int32_t cat = t->TokenId("cat");
  EXPECT_THAT(Enc(*t, "a  <mask> b"), ElementsAre('a', mask, ' ', 'b'));
  EXPECT_THAT(Enc(*t, "a <sep>  b"), ElementsAre('a', ' ', sep, 'b'));
  EXPECT_THAT(Enc(*t, "a cat"), ElementsAre('a', ' ', cat));
  EXPECT_THAT(Enc(*t, "concat"), ElementsAre('c', 'o', 'n', 'c', 'a', 't'));
  EXPECT_THAT(Enc(*t, "cats"), ElementsAre('c', 'a', 't', 's'));
  // Decoding gives the token contents; stripped whitespace is gone.
  EXPECT_EQ(t->Decode(Enc(*t, "a  <mask> b")), "a<mask> b");
}

TEST(AddedTokens, NormalizedTokensMatchAfterNfc) {
  nlohmann::json j = TinyTokenizerJson(
      {}, {{"caf\xc3\xa9", /*special=*/false, false, false, false, /*normalized=*/true}});
  j["normalizer"] = {{"type", "NFC"}};
  auto t = MakeTokenizer(j);
  ASSERT_NE(t, nullptr);
  const int32_t cafe = t->TokenId("caf\xc3\xa9");
  EXPECT_THAT(Enc(*t, "cafe\xcc\x81!"), ElementsAre(cafe, '!'));  // decomposed input
  EXPECT_THAT(Enc(*t, "e\xcc\x81"), ElementsAre(0xC3, 0xA9));     // NFC before BPE
}

TEST(Decode, SkipsSpecialTokensOnRequest) {
  auto t = MakeTokenizer(TinyTokenizerJson({}, {{"<|im_end|>"}, {"<tool>", false}}));
  ASSERT_NE(t, nullptr);
  const auto ids = Enc(*t, "x<|im_end|>y<tool>");
  EXPECT_EQ(t->Decode(ids), "x<|im_end|>y<tool>");
  EXPECT_EQ(t->Decode(ids, /*skip_special=*/true), "xy<tool>");
  EXPECT_EQ(t->TokenBytes(t->TokenId("<|im_end|>")), "<|im_end|>");
  EXPECT_EQ(t->TokenBytes(-5), "");
  EXPECT_EQ(t->Decode(std::vector<int32_t>{'a', 1 << 22, -1, 'b'}), "ab");
}

TEST(Encode, AddBosAndStopIds) {
  nlohmann::json j = TinyTokenizerJson({}, {{"<|endoftext|>"}, {"<|im_start|>"}, {"<|im_end|>"}});
  auto t = MakeTokenizer(j);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->bos_id(), -1);
  EXPECT_THAT(Enc(*t, "a", {.add_bos = true}), ElementsAre('a'));  // no BOS defined
  EXPECT_THAT(t->StopIds(), ElementsAre(t->TokenId("<|im_end|>"), t->TokenId("<|endoftext|>")));
  EXPECT_EQ(t->vocab_size(), 259);
  auto chat = t->ApplyChatTemplate({}, true);
  EXPECT_EQ(chat.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(chat.status().message(), HasSubstr("no chat template"));
}

TEST(Encode, IsThreadSafe) {
  auto t = MakeTokenizer(TinyTokenizerJson({{"a", "b"}, {"ab", "c"}}));
  ASSERT_NE(t, nullptr);
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (int i = 0; i < 2000; ++i) {
        const std::string text = "abc ab " + std::to_string(i * 4 + k) + " cab";
        auto ids = t->Encode(text);
        if (!ids.ok() || t->Decode(*ids) != text) ++bad;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

}  // namespace
}  // namespace resa::tok
