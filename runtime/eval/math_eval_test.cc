#include "runtime/eval/math_eval.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "runtime/eval/math_data.h"

namespace resa {
namespace {

namespace fs = std::filesystem;

// Answers "\boxed{<n>}" where n is the number after "Q" in the question; correct for questions
// whose gold equals it. Records every request it saw.
class FakeGenerator : public MathGenerator {
 public:
  absl::Status Generate(std::span<const GenerationRequest> requests,
                        const GenerationDone& on_done) override {
    for (size_t i = 0; i < requests.size(); ++i) {
      seen.push_back(requests[i]);
      const std::string& p = requests[i].prompt;
      const size_t q = p.find("Q");
      const std::string n = p.substr(q + 1, p.find(' ', q) - q - 1);
      GenerationResult r;
      r.text = "Thinking... so the answer is \\boxed{" + n + "}.";
      r.prompt_tokens = 10;
      r.generated_tokens = 5 + int(i % 3);
      r.finish_reason = "stop";
      r.report.blocks_read = 3;
      r.report.blocks_total = 4;
      absl::Status st = on_done(i, r);
      if (!st.ok()) return st;
    }
    return absl::OkStatus();
  }
  std::string Describe() const override { return "fake"; }
  std::vector<GenerationRequest> seen;
};

class MathEvalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("resa_math_eval_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_ / "data" / "gsm8k");
    fs::create_directories(root_ / "data" / "amc23");
    // gsm8k: Q7 gold 7 (right), Q8 gold 9 (wrong), Q3 gold 3 (right).
    std::ofstream g(root_ / "data" / "gsm8k" / "test.jsonl");
    g << R"({"question":"Q7 apples?","answer":"7 apples\n#### 7","idx":0})" << "\n"
      << R"({"question":"Q8 pears?","answer":"nine\n#### 9","idx":1})" << "\n"
      << R"({"question":"Q3 figs?","answer":"#### 3","idx":2})" << "\n";
    std::ofstream a(root_ / "data" / "amc23" / "test.jsonl");
    a << R"({"id":0,"question":"Q27 miles?","answer":27.0})" << "\n"
      << R"({"id":1,"question":"Q5 ways?","answer":6.0})" << "\n";
    opt_.data_dir = (root_ / "data").string();
    opt_.datasets = {"gsm8k", "amc23"};
    opt_.modes = {DecodeMode::kDense, DecodeMode::kSparse, DecodeMode::kResa};
    opt_.out_dir = (root_ / "out").string();
    opt_.max_new_tokens = 32;
    opt_.progress = false;
    opt_.seed = 100;
  }
  void TearDown() override { fs::remove_all(root_); }

  std::vector<nlohmann::json> Records(const std::string& file) {
    std::vector<nlohmann::json> out;
    std::ifstream in(fs::path(opt_.out_dir) / file);
    std::string line;
    while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
    return out;
  }

  fs::path root_;
  MathEvalOptions opt_;
};

TEST_F(MathEvalTest, WritesGradedRecordsPerDatasetAndMode) {
  FakeGenerator gen;
  auto stats = RunMathEval(opt_, gen);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->generated, 15);  // 5 problems x 3 modes
  EXPECT_EQ(stats->skipped, 0);
  for (const char* mode : {"dense", "sparse", "resa"}) {
    const auto gsm = Records(std::string("gsm8k.") + mode + ".jsonl");
    ASSERT_EQ(gsm.size(), 3u) << mode;
    std::map<int, bool> correct;
    for (const auto& r : gsm) {
      correct[r["index"].get<int>()] = r["correct"].get<bool>();
      EXPECT_EQ(r["mode"], mode);
      for (const char* key : {"dataset", "id", "sample", "seed", "prompt", "output", "pred",
                              "gold", "gold_raw", "prompt_tokens", "generated_tokens",
                              "finish_reason", "report"}) {
        EXPECT_TRUE(r.contains(key)) << key;
      }
      EXPECT_EQ(r["report"]["blocks_read"], 3);
    }
    EXPECT_EQ(correct, (std::map<int, bool>{{0, true}, {1, false}, {2, true}})) << mode;
    const auto amc = Records(std::string("amc23.") + mode + ".jsonl");
    ASSERT_EQ(amc.size(), 2u);
  }
  // The r1 template of resa-spec.md §6.3, and per-item seeds shared by the modes.
  EXPECT_EQ(gen.seen[0].prompt,
            "Please reason step by step, and put your final answer within \\boxed{}.\n"
            "Q7 apples?\n\n<think>\n");
  std::map<std::string, std::set<uint64_t>> seeds;  // question -> seeds over modes
  for (const auto& r : gen.seen) seeds[r.prompt].insert(r.sampling.seed);
  ASSERT_EQ(seeds.size(), 5u);
  for (const auto& [prompt, s] : seeds) EXPECT_EQ(s.size(), 1u) << prompt;
  // Round-robin over datasets: rank 0 of gsm8k, then rank 0 of amc23, every mode together.
  EXPECT_NE(gen.seen[3].prompt.find("Q27"), std::string::npos);
}

TEST_F(MathEvalTest, ResumeRedoesNothing) {
  {
    FakeGenerator gen;
    opt_.stop_after = 4;
    auto stats = RunMathEval(opt_, gen);
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_EQ(stats->generated, 4);
  }
  FakeGenerator gen;
  opt_.stop_after = 0;
  auto stats = RunMathEval(opt_, gen);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->skipped, 4);
  EXPECT_EQ(stats->generated, 11);
  EXPECT_EQ(gen.seen.size(), 11u);
  // Each (problem, mode) exactly once across both runs.
  for (const char* mode : {"dense", "sparse", "resa"}) {
    std::multiset<int> idx;
    for (const auto& r : Records(std::string("gsm8k.") + mode + ".jsonl")) {
      idx.insert(r["index"].get<int>());
    }
    EXPECT_EQ(idx, (std::multiset<int>{0, 1, 2})) << mode;
  }
  // A third run finds everything done.
  FakeGenerator idle;
  auto again = RunMathEval(opt_, idle);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->generated, 0);
  EXPECT_EQ(again->skipped, 15);
  EXPECT_TRUE(idle.seen.empty());
}

TEST_F(MathEvalTest, TornLastLineIsRedone) {
  opt_.datasets = {"gsm8k"};
  opt_.modes = {DecodeMode::kDense};
  FakeGenerator first;
  opt_.stop_after = 2;
  ASSERT_TRUE(RunMathEval(opt_, first).ok());
  // An interrupted write: half a record without its newline.
  {
    std::ofstream f(fs::path(opt_.out_dir) / "gsm8k.dense.jsonl", std::ios::app);
    f << R"({"dataset":"gsm8k","index":2,"sam)";
  }
  opt_.stop_after = 0;
  FakeGenerator second;
  auto stats = RunMathEval(opt_, second);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->generated, 1);
  EXPECT_EQ(Records("gsm8k.dense.jsonl").size(), 3u);  // parses: the torn line is gone
}

TEST_F(MathEvalTest, SettingsMismatchRefusesToResume) {
  FakeGenerator gen;
  opt_.stop_after = 1;
  ASSERT_TRUE(RunMathEval(opt_, gen).ok());
  opt_.max_new_tokens = 64;
  auto stats = RunMathEval(opt_, gen);
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(stats.status().message().find("max_new_tokens"), absl::string_view::npos);
}

TEST_F(MathEvalTest, SamplesGetDistinctSeedsAndPerDatasetLimits) {
  opt_.samples = 2;
  opt_.modes = {DecodeMode::kResa};
  opt_.dataset_limits = {1, 0};  // gsm8k: first problem only; amc23: --limit (0 = all)
  FakeGenerator gen;
  auto stats = RunMathEval(opt_, gen);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->generated, 6);  // (1 + 2 problems) x 2 samples
  std::set<uint64_t> seeds;
  for (const auto& r : gen.seen) seeds.insert(r.sampling.seed);
  EXPECT_EQ(seeds.size(), 4u);  // gsm8k#0 and amc23#0 share index 0: seeds 100, 101 twice
  EXPECT_EQ(*seeds.begin(), 100u);
  EXPECT_EQ(Records("gsm8k.resa.jsonl").size(), 2u);
}

TEST(MathData, GoldAnswersPerDataset) {
  EXPECT_EQ(*RawGoldAnswer(R"({"answer":"so 3+4=7\n#### 7"})", "gsm8k"), "7");
  EXPECT_EQ(*RawGoldAnswer(R"({"solution":"x=\\boxed{\\frac{1}{2}} cm"})", "minerva_math"),
            "\\frac{1}{2}");
  EXPECT_EQ(*RawGoldAnswer(R"({"final_answer":["$(1,2)$"]})", "olympiadbench"), "(1,2)");
  EXPECT_EQ(*RawGoldAnswer(R"({"answer":27.0})", "amc23"), "27.0");
  EXPECT_EQ(*RawGoldAnswer(R"({"answer":"$\\frac{\\pi}{3}$"})", "gaokao2023en"), "\\frac{\\pi}{3}");
  EXPECT_FALSE(RawGoldAnswer(R"({"answer":"no hashes"})", "gsm8k").ok());
  EXPECT_FALSE(RawGoldAnswer("not json", "aime24").ok());
}

TEST(MathData, UnknownDatasetListsKnownOnes) {
  auto r = LoadMathDataset("/nonexistent", "mathqa");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("gsm8k"), absl::string_view::npos);
  EXPECT_NE(r.status().message().find("olympiadbench"), absl::string_view::npos);
}

}  // namespace
}  // namespace resa
