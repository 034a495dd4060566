#include "runtime/engine/sampler.h"

#include <map>
#include <vector>

#include "gtest/gtest.h"

namespace resa {
namespace {

TEST(Sampler, GreedyPicksArgmaxLowestIdOnTies) {
  std::vector<float> l = {0.1f, 3.0f, 3.0f, -1.0f};
  Sampler s(SamplingParams{});
  EXPECT_EQ(s.Sample(l.data(), 4), 1);
}

TEST(Sampler, TopKOneAndTinyTopPAreGreedy) {
  std::vector<float> l = {0.1f, 2.0f, 1.9f, -1.0f};
  Sampler k1(SamplingParams{1.0f, 1, 1.0f, 3});
  Sampler p0(SamplingParams{1.0f, 0, 1e-6f, 3});
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(k1.Sample(l.data(), 4), 1);
    EXPECT_EQ(p0.Sample(l.data(), 4), 1);
  }
}

TEST(Sampler, SeedReproducesAndFrequenciesFollowSoftmax) {
  std::vector<float> l = {0.0f, std::log(3.0f)};  // p = 1/4, 3/4
  Sampler a(SamplingParams{1.0f, 0, 1.0f, 7}), b(SamplingParams{1.0f, 0, 1.0f, 7});
  int ones = 0;
  for (int i = 0; i < 4000; ++i) {
    int x = a.Sample(l.data(), 2);
    EXPECT_EQ(x, b.Sample(l.data(), 2));
    ones += x;
  }
  EXPECT_NEAR(ones / 4000.0, 0.75, 0.03);
}

TEST(Sampler, TopPKeepsSmallestPrefixReachingMass) {
  // probs 0.5, 0.3, 0.2: top_p 0.7 keeps {0, 1}; token 2 never appears.
  std::vector<float> l = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  Sampler s(SamplingParams{1.0f, 0, 0.7f, 1});
  std::map<int, int> seen;
  for (int i = 0; i < 2000; ++i) seen[s.Sample(l.data(), 3)]++;
  EXPECT_EQ(seen.count(2), 0u);
  EXPECT_NEAR(seen[0] / 2000.0, 0.5 / 0.8, 0.04);
}

TEST(Sampler, ValidateNamesTheFlag) {
  EXPECT_NE(SamplingParams{-1.0f}.Validate().message().find("--temperature"), std::string::npos);
  EXPECT_NE((SamplingParams{1.0f, -2}).Validate().message().find("--top-k"), std::string::npos);
  EXPECT_NE((SamplingParams{1.0f, 0, 0.0f}).Validate().message().find("--top-p"),
            std::string::npos);
}

}  // namespace
}  // namespace resa
