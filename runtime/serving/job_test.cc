// Job text handling: stop strings found across token boundaries, text held back only while it
// could still become a stop string, whole UTF-8 characters.
#include "runtime/serving/job.h"

#include "gtest/gtest.h"
#include "runtime/tokenizer/test_util.h"

namespace resa::serving {
namespace {

TEST(StopMatcherTest, FindsStopsAcrossAppendsAndHoldsBackPrefixes) {
  StopMatcher m({"STOP", "\n\n"});
  std::string text = "abc S";
  EXPECT_EQ(m.Find(text), std::string::npos);
  EXPECT_EQ(m.Releasable(text), 4u);  // "S" may start "STOP"
  text += "TO";
  EXPECT_EQ(m.Find(text), std::string::npos);
  EXPECT_EQ(m.Releasable(text), 4u);
  text += "Px";
  EXPECT_EQ(m.Find(text), 4u);
}

TEST(StopMatcherTest, ReleasesWhenThePrefixBreaksAndPicksTheEarliestStop) {
  StopMatcher m({"abcd", "cd"});
  std::string text = "xab";
  EXPECT_EQ(m.Find(text), std::string::npos);
  EXPECT_EQ(m.Releasable(text), 1u);
  text += "x";
  EXPECT_EQ(m.Find(text), std::string::npos);
  EXPECT_EQ(m.Releasable(text), 4u);
  text += "abcd";
  EXPECT_EQ(m.Find(text), 4u);  // "abcd" at 4 starts before "cd" at 6
  StopMatcher none({});
  EXPECT_EQ(none.Find("anything"), std::string::npos);
  EXPECT_EQ(none.Releasable("anything"), 8u);
}

class JobTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto t = Tokenizer::FromJsonText(tok::testing::TinyTokenizerJson({}).dump(), "tiny.json");
    ASSERT_TRUE(t.ok()) << t.status();
    tok_ = std::move(*t);
  }
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(JobTest, TextIsCutBeforeTheStopStringAndTokensAreKept) {
  Job job("j", 1, *tok_, {"</s>"});
  const std::string out = "hi</s>more";
  bool stopped = false;
  size_t n = 0;
  for (char ch : out) {
    ++n;
    if (job.AddToken(static_cast<uint8_t>(ch), absl::Now())) {
      stopped = true;
      break;
    }
    EXPECT_LE(job.released, 2u);  // never any byte of "</s>"
  }
  ASSERT_TRUE(stopped);
  EXPECT_EQ(n, 6u);
  EXPECT_EQ(job.text, "hi");
  job.End(v1::JOB_STATE_FINISHED, v1::FINISH_REASON_STOP, absl::Now());
  EXPECT_EQ(job.text.substr(0, job.released), "hi");
  EXPECT_EQ(job.tokens.size(), 6u);
}

TEST_F(JobTest, MultiByteCharactersAreReleasedWhole) {
  Job job("j", 1, *tok_, {});
  const std::string euro = "\xE2\x82\xAC";  // one character, three byte tokens
  job.AddToken(static_cast<uint8_t>(euro[0]), absl::Now());
  job.AddToken(static_cast<uint8_t>(euro[1]), absl::Now());
  EXPECT_EQ(job.released, 0u);
  job.AddToken(static_cast<uint8_t>(euro[2]), absl::Now());
  EXPECT_EQ(job.text.substr(0, job.released), euro);
  v1::JobInfo info = job.Info(true);
  EXPECT_EQ(info.token_ids_size(), 3);
  EXPECT_EQ(info.text(), euro);
  EXPECT_EQ(info.report().generated_tokens(), 3);
}

}  // namespace
}  // namespace resa::serving
