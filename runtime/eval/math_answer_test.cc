#include "runtime/eval/math_answer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numbers>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/eval/math_data.h"

namespace resa {
namespace {

std::vector<std::string> SplitTabs(const std::string& line) {
  std::vector<std::string> f;
  std::stringstream ss(line);
  std::string x;
  while (std::getline(ss, x, '\t')) f.push_back(x);
  return f;
}

// Every (answer, gold, verdict) triple of testdata/grading_triples.tsv, graded as the evaluation
// does: the answer boxed inside a model-style output and extracted, the gold normalised.
TEST(MathGrading, TriplesFromTheDatasets) {
  std::ifstream in(std::string(RESA_EVAL_TESTDATA) + "/grading_triples.tsv");
  ASSERT_TRUE(in) << "missing testdata/grading_triples.tsv";
  std::string line;
  int rows = 0, equal_rows = 0;
  for (int lineno = 1; std::getline(in, line); ++lineno) {
    if (line.empty() || line[0] == '#') continue;
    const auto f = SplitTabs(line);
    ASSERT_EQ(f.size(), 4u) << "line " << lineno << ": " << line;
    ASSERT_TRUE(f[0] == "=" || f[0] == "!=") << "line " << lineno;
    const bool want = f[0] == "=";
    const std::string output = "Let me work it out.\nThe answer is $\\boxed{" + f[2] + "}$.";
    const std::string pred = ExtractAnswer(output, f[1]);
    const std::string gold = NormalizeAnswer(f[3], f[1] == "minerva_math");
    EXPECT_EQ(MathEqual(pred, gold), want)
        << "line " << lineno << " [" << f[1] << "]: answer '" << f[2] << "' -> '" << pred
        << "', gold '" << f[3] << "' -> '" << gold << "', expected " << f[0];
    ++rows;
    equal_rows += want ? 1 : 0;
  }
  EXPECT_GE(rows, 150);
  // Both verdicts are well represented, so neither "always equal" nor "never" can pass.
  EXPECT_GE(equal_rows, rows / 3);
  EXPECT_GE(rows - equal_rows, rows / 5);
}

struct ExtractCase {
  const char* output;
  const char* dataset;
  const char* want;
};

TEST(MathExtraction, ReferenceFallbacks) {
  const ExtractCase cases[] = {
      {"so the answer is \\boxed{\\frac{1}{2}}.", "gsm8k", "\\frac{1}{2}"},
      {"$\\boxed{\\frac{\\sqrt{3}}{2}}$", "gaokao2023en", "\\frac{\\sqrt{3}}{2}"},
      {"First \\boxed{1}, then on reflection \\boxed{2}", "gsm8k", "2"},
      {"hence \\boxed 5$ done", "amc23", "5"},
      {"The answer is 42.", "gsm8k", "42"},
      {"The final answer is $7$. I hope it is correct.", "minerva_math", "7"},
      {"We get 3 apples and then 12 more, total 15 apples", "gsm8k", "15"},
      {"So she pays 1,234 in total", "gsm8k", "1234"},
      {"She has -3.5 degrees left", "gsm8k", "-3.5"},
      {"no digits at all", "gsm8k", ""},
      {"the box is cut \\boxed{\\frac{3}{4", "amc23", "\\frac{3}{4"},
      {"$\\boxed{x = 3}$", "gaokao2023en", "3"},
      {"\\boxed{10\\%}", "gsm8k", "10"},
      {"\\boxed{5\\text{ cm}}", "gsm8k", "5"},
      {"\\boxed{\\$18}", "gsm8k", "18"},
      {"\\boxed{90^\\circ}", "gaokao2023en", "90"},
      {"\\boxed{\\left( 1, 2 \\right)}", "olympiadbench", "(1,2)"},
      {"\\boxed{\\dfrac{3}{4}}", "amc23", "\\frac{3}{4}"},
      {"\\boxed{3/4}", "amc23", "\\frac{3}{4}"},
      {"\\boxed{27.00}", "aime24", "27"},
      {"\\boxed{five}", "gsm8k", "5"},
      {"\\boxed{\\sqrt2}", "gaokao2023en", "\\sqrt{2}"},
      {"\\boxed{\\frac12}", "gaokao2023en", "\\frac{1}{2}"},
      {"\\boxed{1.6 cm}", "minerva_math", "1.6cm"},  // minerva keeps unit words
      {"\\boxed{1.6 cm}", "gsm8k", "1.6"},
      {"\\boxed{\n  12\n}", "gsm8k", "12"},
      {"\\boxed{: 8.}", "gsm8k", "8"},
      {"\\boxed{\\text{(C)}}", "gaokao2023en", "(C)"},
  };
  for (const ExtractCase& c : cases) {
    EXPECT_EQ(ExtractAnswer(c.output, c.dataset), c.want) << "output: " << c.output;
  }
}

TEST(MathExtraction, LastBoxedHandlesNesting) {
  EXPECT_EQ(LastBoxed("a \\boxed{\\frac{a}{b}} b \\boxed{{x}^{2}}"), "{x}^{2}");
  EXPECT_EQ(LastBoxed("\\fbox{7} after \\boxed{6}"), "6");
  EXPECT_EQ(LastBoxed("\\boxed{6} after \\fbox{7}"), "7");
  EXPECT_FALSE(LastBoxed("no box").has_value());
  EXPECT_FALSE(LastBoxed("\\boxed{unclosed").has_value());
}

TEST(MathNormalize, Canonicalisation) {
  EXPECT_EQ(NormalizeAnswer("\\left( \\dfrac{1}{2}, \\tfrac34 \\right)"),
            "(\\frac{1}{2},\\frac{3}{4})");
  EXPECT_EQ(NormalizeAnswer("12 \\text{ inches}"), "12");
  EXPECT_EQ(NormalizeAnswer("\\$1,000.00"), "1,000");
  EXPECT_EQ(NormalizeAnswer("k = 5"), "5");
  EXPECT_EQ(NormalizeAnswer("\\emptyset"), "{}");
  EXPECT_EQ(NormalizeAnswer("\\sqrt3/2"), "\\frac{\\sqrt{3}}{2}");
  EXPECT_EQ(NormalizeAnswer(".5"), "0.5");
  EXPECT_EQ(NormalizeAnswer("3 \\! 000"), "3000");
}

TEST(MathEvaluate, KnownValues) {
  const std::pair<const char*, double> cases[] = {
      {"1+2*3", 7.0},
      {"\\frac{1}{2}+\\frac{1}{3}", 5.0 / 6.0},
      {"2^{10}", 1024.0},
      {"2^3 4", 32.0},  // LaTeX: ^ takes one digit without braces
      {"\\sqrt{16}", 4.0},
      {"\\sqrt[3]{27}", 3.0},
      {"2\\pi", 2.0 * std::numbers::pi},
      {"-(3-5)", 2.0},
      {"3!", 6.0},
      {"\\binom{5}{2}", 10.0},
      {"2(3+4)", 14.0},
      {"\\log_{2}8", 3.0},
      {"4.5e3", 4500.0},
      {"3\\times 10^{-2}", 0.03},
      {"|-4|", 4.0},
  };
  for (const auto& [expr, want] : cases) {
    const std::optional<double> v = EvaluateLatex(expr);
    ASSERT_TRUE(v.has_value()) << expr;
    EXPECT_NEAR(*v, want, 1e-9 * std::max(1.0, std::abs(want))) << expr;
  }
  for (const char* bad : {"x+1", "\\infty", "(1,2", "1+", "\\unknown{3}", "{x|x>1}"}) {
    EXPECT_FALSE(EvaluateLatex(bad).has_value()) << bad;
  }
}

TEST(MathEqual, PercentAndToleranceRules) {
  EXPECT_TRUE(MathEqual("0.25", "25"));  // the reference's percent reading
  EXPECT_FALSE(MathEqual("0.25", "25", GradeOptions{.include_percentage = false}));
  EXPECT_FALSE(MathEqual("800", "8"));      // two integers: exact, no percent reading
  EXPECT_FALSE(MathEqual("70001", "70000"));
  EXPECT_TRUE(MathEqual("1,000", "1000"));
  EXPECT_TRUE(MathEqual("1.00001", "1"));   // relative 1e-5
  EXPECT_FALSE(MathEqual("1.001", "1"));    // relative 1e-3
  EXPECT_FALSE(MathEqual("", "1"));
  EXPECT_TRUE(MathEqual("", ""));
}

// Every gold answer of every dataset, boxed as a model would write it, grades correct against
// itself: extraction and normalisation agree with how golds are read. Skips without the data.
TEST(MathGrading, EveryGoldMatchesItselfBoxed) {
  const char* env = std::getenv("RESA_MATH_DATA");
  const std::string dir = env != nullptr ? env : "/work/shared/data/math";
  if (!std::filesystem::is_directory(dir)) GTEST_SKIP() << "no math data at " << dir;
  int checked = 0;
  for (const std::string& name : KnownMathDatasets()) {
    auto problems = LoadMathDataset(dir, name);
    ASSERT_TRUE(problems.ok()) << problems.status();
    for (const MathProblem& p : *problems) {
      if (p.gold.empty()) continue;  // a few gaokao rows have no answer
      const std::string pred = ExtractAnswer("\\boxed{" + p.gold_raw + "}", name);
      EXPECT_TRUE(MathEqual(pred, p.gold))
          << name << " #" << p.index << ": gold '" << p.gold_raw << "' -> pred '" << pred
          << "' vs '" << p.gold << "'";
      ++checked;
    }
  }
  EXPECT_GT(checked, 2500);
}

}  // namespace
}  // namespace resa
