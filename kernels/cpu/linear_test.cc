#include "kernels/cpu/linear.h"

#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"
#include "kernels/testing/tolerance.h"

namespace resa {
namespace {

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = u(rng);
  return x;
}

class LinearTest : public ::testing::TestWithParam<std::tuple<int, int, int, bool>> {};

TEST_P(LinearTest, MatchesReference) {
  auto [rows, n_in, n_out, with_bias] = GetParam();
  LinearShape s{rows, n_in, n_out};
  auto x = Random(size_t(rows) * n_in, 1);
  auto w = Random(size_t(n_out) * n_in, 2);
  auto b = Random(n_out, 3);
  std::vector<float> y(size_t(rows) * n_out), y_ref(y.size());
  LinearReference(s, x.data(), w.data(), with_bias ? b.data() : nullptr, y_ref.data());
  Linear(s, x.data(), w.data(), with_bias ? b.data() : nullptr, y.data());
  // Sums of n_in products of magnitude <= 1: fp32 reordering error grows with sqrt(n_in).
  EXPECT_TRUE(testing::AllClose(y.data(), y_ref.data(), y.size(), testing::Tolerance{1e-4, 1e-4}));
}

INSTANTIATE_TEST_SUITE_P(Shapes, LinearTest,
                         ::testing::Combine(::testing::Values(1, 2, 3, 7, 8, 9, 33),
                                            ::testing::Values(64, 577),
                                            ::testing::Values(1, 5, 130),
                                            ::testing::Bool()));

TEST(Ops, RopeRotatesHalfSplitPairsAndKeepsNorm) {
  const int d = 8;
  std::vector<float> x = Random(d, 4), y = x;
  int32_t pos = 3;
  RopeNeox(y.data(), 1, 1, d, &pos, 10000.0f);
  for (int i = 0; i < d / 2; ++i) {
    const double a = 3.0 * std::pow(10000.0, -2.0 * i / d);
    EXPECT_NEAR(y[i], x[i] * std::cos(a) - x[i + d / 2] * std::sin(a), 1e-6);
    EXPECT_NEAR(y[i + d / 2], x[i + d / 2] * std::cos(a) + x[i] * std::sin(a), 1e-6);
  }
  pos = 0;
  std::vector<float> z = x;
  RopeNeox(z.data(), 1, 1, d, &pos, 10000.0f);
  EXPECT_EQ(z, x);
}

TEST(Ops, RmsNormKnownAnswer) {
  std::vector<float> x = {3.0f, 4.0f}, w = {1.0f, 2.0f}, y(2);
  RmsNorm(x.data(), w.data(), 1, 2, 0.0f, y.data());
  const float rms = std::sqrt(12.5f);
  EXPECT_NEAR(y[0], 3.0f / rms, 1e-6);
  EXPECT_NEAR(y[1], 8.0f / rms, 1e-6);
}

}  // namespace
}  // namespace resa

namespace resa {
namespace {

TEST(VecMath, FastExpMatchesStdExp) {
  double worst = 0.0;
  for (float x = -87.0f; x <= 88.0f; x += 0.001953125f) {
    const double want = std::exp(double(x));
    const double rel = std::fabs(double(FastExp(x)) - want) / want;
    worst = std::max(worst, rel);
  }
  EXPECT_LT(worst, 3e-7);
  EXPECT_EQ(FastExp(0.0f), 1.0f);
  EXPECT_LT(FastExp(-1000.0f), 1e-37f);
}

}  // namespace
}  // namespace resa
