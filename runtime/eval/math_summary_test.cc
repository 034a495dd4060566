#include "runtime/eval/math_summary.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace resa {
namespace {

const std::string kFixture = std::string(RESA_EVAL_TESTDATA) + "/summary_fixture";

bool Contains(const std::string& text, const std::string& line) {
  return text.find(line) != std::string::npos;
}

// testdata/summary_fixture: dense and resa over gsm8k (3 records) and amc23 (2), numbers chosen
// so every column differs between the modes.
TEST(MathSummary, PaperTableFromFixture) {
  auto s = SummarizeMathDir(kFixture);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->datasets, (std::vector<std::string>{"amc23", "gsm8k"}));  // paper order
  EXPECT_EQ(s->modes, (std::vector<std::string>{"dense", "resa"}));
  const std::string md = SummaryMarkdown(*s);
  EXPECT_TRUE(Contains(md, "| mode | amc23 | gsm8k | Avg | avg length (tokens) | blocks read | "
                           "cut at budget |\n"))
      << md;
  EXPECT_TRUE(Contains(md, "| dense | 50.0 (1/2) | 66.7 (2/3) | **58.33** | 350.0 | 100.0% | "
                           "1/5 |\n"))
      << md;
  EXPECT_TRUE(Contains(md, "| resa | 50.0 (1/2) | 33.3 (1/3) | **41.67** | 400.0 | 26.2% | "
                           "1/5 |\n"))
      << md;
  EXPECT_TRUE(Contains(md, "| avg length, resa | 600.0 | 200.0 | 400.0 | | | |\n")) << md;
  // resa against dense on the same 5 problems: amc23 #1 and gsm8k #1 answer differently, and
  // gsm8k #1 is right only in dense.
  EXPECT_TRUE(Contains(md, "| vs dense | problems | same answer | identical output | right only "
                           "here | right only in dense |\n"))
      << md;
  EXPECT_TRUE(Contains(md, "| resa | 5 | 60.0% (3) | 60.0% (3) | 0 | 1 |\n")) << md;
  ASSERT_EQ(s->agreement.size(), 2u);
  EXPECT_EQ(s->agreement[0][0].n, 0);  // dense against itself is not counted
  const std::string csv = SummaryCsv(*s);
  EXPECT_EQ(csv,
            "mode,dataset,n,correct,accuracy,avg_generated_tokens,blocks_read_percent,truncated\n"
            "dense,amc23,2,1,50.00,500.0,100.00,0\n"
            "dense,gsm8k,3,2,66.67,200.0,100.00,1\n"
            "dense,avg,5,3,58.33,350.0,100.00,1\n"
            "resa,amc23,2,1,50.00,600.0,25.00,0\n"
            "resa,gsm8k,3,1,33.33,200.0,27.27,1\n"
            "resa,avg,5,2,41.67,400.0,26.19,1\n");
}

TEST(MathSummary, RegradeUsesTheStoredOutputs) {
  // amc23.resa #1 is stored as wrong but its output holds the gold answer.
  auto s = SummarizeMathDir(kFixture, SummaryOptions{.regrade = true});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->cell(1, 0).correct, 2);  // resa, amc23
  EXPECT_EQ(s->cell(1, 1).correct, 1);  // resa, gsm8k unchanged
  EXPECT_EQ(s->cell(0, 1).correct, 2);  // dense, gsm8k unchanged
}

TEST(MathSummary, PairedCountsOnlyItemsEveryModeHas) {
  const auto dir = std::filesystem::temp_directory_path() / "resa_math_summary_paired";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const auto rec = [](int index, bool correct) {
    return "{\"index\":" + std::to_string(index) + ",\"sample\":0,\"correct\":" +
           (correct ? "true" : "false") + ",\"generated_tokens\":10}\n";
  };
  std::ofstream(dir / "gsm8k.dense.jsonl") << rec(0, false) << rec(1, true) << rec(2, true);
  std::ofstream(dir / "gsm8k.sparse.jsonl") << rec(0, true) << rec(1, false);
  auto all = SummarizeMathDir(dir.string());
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->cell(0, 0).n, 3);
  EXPECT_EQ(all->cell(0, 0).correct, 2);
  auto paired = SummarizeMathDir(dir.string(), SummaryOptions{.paired = true});
  ASSERT_TRUE(paired.ok()) << paired.status();
  EXPECT_EQ(paired->cell(0, 0).n, 2);  // dense without its index 2
  EXPECT_EQ(paired->cell(0, 0).correct, 1);
  EXPECT_EQ(paired->cell(1, 0).n, 2);
  std::filesystem::remove_all(dir);
}

TEST(MathSummary, EmptyOrMissingDirectoryIsAnError) {
  EXPECT_EQ(SummarizeMathDir("/nonexistent/dir").status().code(), absl::StatusCode::kNotFound);
  const auto empty = std::filesystem::temp_directory_path() / "resa_math_summary_empty";
  std::filesystem::create_directories(empty);
  EXPECT_EQ(SummarizeMathDir(empty.string()).status().code(), absl::StatusCode::kNotFound);
  std::filesystem::remove_all(empty);
}

}  // namespace
}  // namespace resa
