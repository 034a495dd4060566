#include "kernels/cpu/selection.h"

#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace resa {
namespace {

TEST(NumSelectedBlocks, SpecTable) {
  // resa-spec.md §2.5 worked examples (ratio 0.1, n_min 16).
  struct Case {
    int32_t tokens, n;
  };
  for (Case c : {Case{256, 16}, Case{100, 7}, Case{1000, 16}, Case{2560, 16}, Case{2576, 17},
                 Case{8192, 52}, Case{32768, 205}, Case{262144, 1639}}) {
    const int32_t m = (c.tokens + 15) / 16;
    EXPECT_EQ(NumSelectedBlocks(m, 0.1f, 16), c.n) << c.tokens << " tokens";
  }
  EXPECT_EQ(NumSelectedBlocks(300, 1.0f, 16), 300);
}

TEST(Selection, WriteTokenKvKeepsSummaryEqualToRecompute) {
  const int hkv = 2, d = 8;
  std::vector<float> k(3 * hkv * 16 * d), v(k.size()), s1(3 * hkv * 2 * d), s2(s1.size());
  PagedKvLayer a{k.data(), v.data(), s1.data(), hkv, d};
  PagedKvLayer b{k.data(), v.data(), s2.data(), hkv, d};
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> u(-20, 20);
  std::vector<float> kt(hkv * d), vt(hkv * d);
  for (int t = 0; t < 16 + 7; ++t) {
    for (auto& x : kt) x = float(u(rng));
    for (auto& x : vt) x = float(u(rng));
    WriteTokenKv(a, t / 16, t % 16, kt.data(), vt.data());
    RecomputeSummary(b, t / 16, t % 16 + 1);
    for (int p = 0; p <= t / 16; ++p) {
      for (int h = 0; h < hkv; ++h) {
        for (int i = 0; i < 2 * d; ++i) ASSERT_EQ(a.min_at(p, h)[i], b.min_at(p, h)[i]);
      }
    }
  }
}

TEST(Selection, TopBlocksMatchesReferenceWithTies) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> u(0, 6);  // many ties
  for (int32_t m : {1, 2, 15, 16, 17, 161, 1000}) {
    const int hkv = 3;
    std::vector<float> scores(size_t(hkv) * m);
    for (auto& s : scores) s = float(u(rng));
    for (int h = 0; h < hkv; ++h) scores[size_t(h) * m + m - 1] = std::numeric_limits<float>::infinity();
    const int32_t n = NumSelectedBlocks(m, 0.1f, 16);
    std::vector<int32_t> got(size_t(hkv) * n), want(got.size());
    TopBlocks(scores.data(), hkv, m, n, got.data());
    TopBlocksReference(scores.data(), hkv, m, n, want.data());
    EXPECT_EQ(got, want) << "M=" << m;
    for (int h = 0; h < hkv; ++h) EXPECT_EQ(got[size_t(h) * n + n - 1], m - 1);  // forced block
  }
}

TEST(Selection, ScoreIsQuestUpperBound) {
  const int hkv = 1, d = 4;
  std::vector<float> k(2 * 16 * d), v(k.size()), s(2 * 2 * d);
  PagedKvLayer kv{k.data(), v.data(), s.data(), hkv, d};
  std::vector<int32_t> table = {1, 0};
  std::mt19937 rng(2);
  std::normal_distribution<float> nd;
  std::vector<float> kt(d), vt(d, 0.0f);
  std::vector<std::vector<float>> keys;
  for (int t = 0; t < 20; ++t) {
    for (auto& x : kt) x = nd(rng);
    keys.push_back(kt);
    WriteTokenKv(kv, table[t / 16], t % 16, kt.data(), vt.data());
  }
  std::vector<float> q = {0.5f, -1.0f, 2.0f, 0.0f}, scores(2);
  ScoreBlocks(kv, q.data(), table.data(), 20, scores.data());
  EXPECT_EQ(scores[1], std::numeric_limits<float>::infinity());
  for (int t = 0; t < 16; ++t) {
    float dot = 0;
    for (int i = 0; i < d; ++i) dot += q[i] * keys[t][i];
    EXPECT_LE(dot, scores[0] + 1e-5f);
  }
}

}  // namespace
}  // namespace resa
