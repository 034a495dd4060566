// tokenizer.json / tokenizer_config.json parsing: accepted forms and errors naming the JSON path.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

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
using testing::TinyTokenizerJson;
using Json = nlohmann::json;

absl::Status LoadError(const Json& j) {
  auto t = Tokenizer::FromJsonText(j.dump(), "t.json");
  return t.ok() ? absl::OkStatus() : t.status();
}

void ExpectError(const Json& j, std::string_view needle) {
  const absl::Status st = LoadError(j);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_THAT(st.message(), HasSubstr(std::string(needle))) << st;
  EXPECT_THAT(st.message(), HasSubstr("t.json")) << st;
}

TEST(JsonLoader, RejectsNonJsonAndWrongRoots) {
  for (std::string_view text : {"", "{", "[]", "42", "null", "{\"model\": 1}"}) {
    auto t = Tokenizer::FromJsonText(text, "t.json");
    EXPECT_FALSE(t.ok()) << text;
  }
}

TEST(JsonLoader, ErrorsNameTheJsonPath) {
  Json j = TinyTokenizerJson({});
  j["normalizer"] = {{"type", "Sequence"},
                     {"normalizers", Json::array({{{"type", "NFC"}}, {{"type", "Lowercase"}}})}};
  ExpectError(j, "normalizer.normalizers[1].type: unsupported normalizer 'Lowercase'");

  j = TinyTokenizerJson({});
  j["pre_tokenizer"]["pretokenizers"][0] = {{"type", "Metaspace"}};
  ExpectError(j, "pre_tokenizer.pretokenizers[0].type: unsupported pre-tokenizer 'Metaspace'");

  j = TinyTokenizerJson({});
  j["pre_tokenizer"]["pretokenizers"][0] = {
      {"type", "Split"}, {"pattern", {{"Regex", "\\d+"}}}, {"behavior", "Removed"}};
  ExpectError(j, "pre_tokenizer.pretokenizers[0].behavior: unsupported split behavior");

  j = TinyTokenizerJson({});
  j["pre_tokenizer"]["pretokenizers"][0] = {
      {"type", "Split"}, {"pattern", {{"Regex", "(oops"}}}, {"behavior", "Isolated"}};
  ExpectError(j, "pre_tokenizer.pretokenizers[0].pattern: split pattern does not compile");

  j = TinyTokenizerJson({});
  j["pre_tokenizer"] = {{"type", "Digits"}};
  ExpectError(j, "no ByteLevel step");

  j = TinyTokenizerJson({});
  j["model"]["type"] = "Unigram";
  ExpectError(j, "model.type: unsupported model 'Unigram'");

  j = TinyTokenizerJson({});
  j["model"]["byte_fallback"] = true;
  ExpectError(j, "model.byte_fallback");

  j = TinyTokenizerJson({});
  j["model"]["vocab"]["a"] = -1;
  ExpectError(j, "model.vocab.a: expected a non-negative integer id");

  j = TinyTokenizerJson({});
  j["model"]["vocab"]["zz"] = 100000000;
  ExpectError(j, "model.vocab.zz: id 100000000 is too large");

  j = TinyTokenizerJson({});
  j["model"]["vocab"]["zz"] = 100000;
  ExpectError(j, "ids are sparse");

  j = TinyTokenizerJson({});
  j["model"]["merges"] = Json::array({"a b c"});
  ExpectError(j, "model.merges[0]");

  j = TinyTokenizerJson({});
  j["model"]["merges"] = Json::array({Json::array({"a", 3})});
  ExpectError(j, "model.merges[0]");

  j = TinyTokenizerJson({});
  j["model"]["merges"] = Json::array({"q r"});  // "qr" is not a token
  ExpectError(j, "merge 0 ('q' 'r'): 'qr' is not in the vocabulary");

  j = TinyTokenizerJson({});
  j["decoder"] = nullptr;
  ExpectError(j, "decoder: missing");

  j = TinyTokenizerJson({});
  j["decoder"] = {{"type", "WordPiece"}};
  ExpectError(j, "decoder.type: unsupported decoder 'WordPiece'");

  j = TinyTokenizerJson({});
  j["added_tokens"] = Json::array({{{"id", 300}, {"content", 7}}});
  ExpectError(j, "added_tokens[0].content: expected a string");

  j = TinyTokenizerJson({});
  j["added_tokens"] = Json::array({{{"content", "x"}}});
  ExpectError(j, "added_tokens[0].id: missing");

  j = TinyTokenizerJson({});
  j["post_processor"] = {{"type", "BertProcessing"}};
  ExpectError(j, "post_processor.type: unsupported post-processor 'BertProcessing'");

  j = TinyTokenizerJson({});
  j["pre_tokenizer"]["pretokenizers"][1]["use_regex"] = "yes";
  ExpectError(j, "pre_tokenizer.pretokenizers[1].use_regex: expected a boolean, got string");
}

TEST(JsonLoader, DeepNestingIsRejected) {
  Json pre = {{"type", "ByteLevel"}};
  for (int i = 0; i < 20; ++i) pre = {{"type", "Sequence"}, {"pretokenizers", Json::array({pre})}};
  Json j = TinyTokenizerJson({});
  j["pre_tokenizer"] = pre;
  ExpectError(j, "nested too deeply");
}

TEST(JsonLoader, AcceptsStringMergesAndHfDefaults) {
  Json j = TinyTokenizerJson({});
  j["model"]["vocab"][Bl(" t")] = 256;
  j["model"]["merges"] = Json::array({Bl(" ") + " t"});
  j["model"].erase("type");                      // old files have no model type
  j["pre_tokenizer"] = {{"type", "ByteLevel"}};  // add_prefix_space defaults to true
  auto t = MakeTokenizer(j);
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(*t->Encode("tt"), ElementsAre(256, 't'));
}

TEST(JsonLoader, TemplateProcessingBosMeansAddBos) {
  Json j = TinyTokenizerJson({}, {{"<s>"}});
  j["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", Json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})}};
  auto t = MakeTokenizer(j);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->bos_id(), 256);
  EXPECT_TRUE(t->add_bos_token());
  EXPECT_THAT(*t->Encode("a", {.add_bos = t->add_bos_token()}), ElementsAre(256, 'a'));
}

// The fuzzer's seed inputs must be valid tokenizers, or the fuzzer starts from parse errors only.
TEST(JsonLoader, FuzzSeedsLoad) {
  const char* src = std::getenv("RESA_SOURCE_DIR");
  if (src == nullptr) GTEST_SKIP() << "RESA_SOURCE_DIR is not set (run through ctest)";
  const std::filesystem::path dir = std::filesystem::path(src) / "tests/fuzz/corpus/tokenizer";
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::ifstream in(entry.path(), std::ios::binary);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto t = Tokenizer::FromJsonText(text, entry.path().string());
    EXPECT_TRUE(t.ok()) << t.status();
    if (t.ok()) {
      EXPECT_TRUE((*t)->Encode("ab abc 123 <|im_start|>x").ok());
    }
    ++n;
  }
  EXPECT_GE(n, 3) << dir;
}

class JsonFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("resa_tok_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void Write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name, std::ios::binary) << text;
  }
  std::string Path() const { return (dir_ / "tokenizer.json").string(); }
  std::filesystem::path dir_;
};

TEST_F(JsonFileTest, ReadsTokenizerConfigBeside) {
  Write("tokenizer.json", TinyTokenizerJson({}, {{"<|im_start|>"}, {"<|im_end|>"}}).dump());
  Write("tokenizer_config.json", Json({{"add_bos_token", true},
                                       {"bos_token", "<|im_start|>"},
                                       {"eos_token", {{"content", "<|im_end|>"}}},
                                       {"chat_template", "{{'<|im_start|>' + m}}"}})
                                     .dump());
  auto t = Tokenizer::FromJsonFile(Path());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->bos_id(), 256);
  EXPECT_EQ((*t)->eos_id(), 257);
  EXPECT_TRUE((*t)->add_bos_token());
  EXPECT_THAT((*t)->StopIds(), ElementsAre(257));
  const ChatMessage msgs[] = {{"user", "hi"}};
  EXPECT_EQ(*(*t)->ApplyChatTemplate(msgs, true),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
}

TEST_F(JsonFileTest, NamedTemplatesAndJinjaFile) {
  Write("tokenizer.json", TinyTokenizerJson({}, {{"<|im_start|>"}}).dump());
  Write(
      "tokenizer_config.json",
      Json({{"chat_template", Json::array({{{"name", "tool_use"}, {"template", "x"}},
                                           {{"name", "default"}, {"template", "<|im_start|>"}}})}})
          .dump());
  auto t = Tokenizer::FromJsonFile(Path());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE((*t)->ApplyChatTemplate({}, false).ok());

  std::filesystem::remove(dir_ / "tokenizer_config.json");
  Write("chat_template.jinja", "{{ '<|im_start|>' }}");
  t = Tokenizer::FromJsonFile(Path());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE((*t)->ApplyChatTemplate({}, false).ok());
}

TEST_F(JsonFileTest, ConfigErrorsNameTheConfigFile) {
  Write("tokenizer.json", TinyTokenizerJson({}).dump());
  Write("tokenizer_config.json", R"({"eos_token": "<nope>"})");
  auto t = Tokenizer::FromJsonFile(Path());
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr("tokenizer_config.json"));
  EXPECT_THAT(t.status().message(), HasSubstr("eos_token: '<nope>' is not in the vocabulary"));
}

TEST_F(JsonFileTest, MissingFileIsNotFound) {
  auto t = Tokenizer::FromJsonFile((dir_ / "absent.json").string());
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace resa::tok
