#include "kernels/cpu/attention.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/selection.h"
#include "kernels/testing/tolerance.h"

namespace resa {
namespace {

struct Cache {
  std::vector<float> k, v, summary;
  PagedKvLayer layer;
  std::vector<int32_t> page_table;
};

// A cache of `num_keys` random keys for one sequence, pages placed in a shuffled order so page
// tables are exercised.
Cache MakeCache(int hkv, int d, int32_t num_keys, uint32_t seed) {
  Cache c;
  const int32_t pages = (num_keys + kPageTokens - 1) / kPageTokens + 1;
  c.k.resize(size_t(pages) * hkv * kPageTokens * d);
  c.v.resize(c.k.size());
  c.summary.resize(size_t(pages) * hkv * 2 * d);
  c.layer = PagedKvLayer{c.k.data(), c.v.data(), c.summary.data(), hkv, d};
  c.page_table.resize(pages);
  std::iota(c.page_table.begin(), c.page_table.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(c.page_table.begin(), c.page_table.end(), rng);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> kt(size_t(hkv) * d), vt(size_t(hkv) * d);
  for (int32_t t = 0; t < num_keys; ++t) {
    for (auto& x : kt) x = nd(rng);
    for (auto& x : vt) x = nd(rng);
    WriteTokenKv(c.layer, c.page_table[t / kPageTokens], t % kPageTokens, kt.data(), vt.data());
  }
  return c;
}

std::vector<float> RandomVec(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> x(n);
  for (auto& v : x) v = nd(rng);
  return x;
}

struct Shape {
  int32_t num_keys;
  int head_dim;
  int group;
  int hkv;
};

class PagedAttentionTest : public ::testing::TestWithParam<Shape> {};

TEST_P(PagedAttentionTest, DenseFastMatchesReference) {
  const Shape s = GetParam();
  const int hq = s.group * s.hkv;
  Cache c = MakeCache(s.hkv, s.head_dim, s.num_keys, 7);
  // Three rows of the same sequence at different lengths (a ragged batch).
  std::vector<AttentionRow> rows;
  for (int32_t len : {s.num_keys, std::max(1, s.num_keys / 2), 1}) {
    rows.push_back(AttentionRow{c.page_table.data(), len});
  }
  auto q = RandomVec(rows.size() * hq * s.head_dim, 11);
  AttentionParams p{hq, 1.0f / std::sqrt(float(s.head_dim))};
  std::vector<float> o_ref(q.size()), o(q.size()), lse_ref(rows.size() * hq), lse(lse_ref.size());
  PagedAttentionReference(c.layer, p, q.data(), rows, o_ref.data(), lse_ref.data());
  PagedAttention(c.layer, p, q.data(), rows, o.data(), lse.data());
  EXPECT_TRUE(testing::AllClose(o.data(), o_ref.data(), o.size(), testing::kF32));
  EXPECT_TRUE(testing::AllClose(lse.data(), lse_ref.data(), lse.size(), testing::kF32));
}

TEST_P(PagedAttentionTest, ChunkMatchesReference) {
  const Shape s = GetParam();
  const int hq = s.group * s.hkv;
  Cache c = MakeCache(s.hkv, s.head_dim, s.num_keys, 3);
  // The last `n` positions as one causal chunk.
  const int n = std::min<int32_t>(s.num_keys, 37);
  const int32_t first = s.num_keys - n + 1;
  std::vector<AttentionRow> rows;
  for (int r = 0; r < n; ++r) rows.push_back(AttentionRow{c.page_table.data(), first + r});
  auto q = RandomVec(size_t(n) * hq * s.head_dim, 5);
  AttentionParams p{hq, 1.0f / std::sqrt(float(s.head_dim))};
  std::vector<float> o_ref(q.size()), o(q.size()), lse_ref(size_t(n) * hq), lse(lse_ref.size());
  PagedAttentionReference(c.layer, p, q.data(), rows, o_ref.data(), lse_ref.data());
  PagedChunkAttention(c.layer, p, q.data(), n, c.page_table.data(), first, o.data(), lse.data());
  EXPECT_TRUE(testing::AllClose(o.data(), o_ref.data(), o.size(), testing::kF32));
  EXPECT_TRUE(testing::AllClose(lse.data(), lse_ref.data(), lse.size(), testing::kF32));
}

TEST_P(PagedAttentionTest, SparseFastMatchesReferenceAndMasksTail) {
  const Shape s = GetParam();
  const int hq = s.group * s.hkv;
  Cache c = MakeCache(s.hkv, s.head_dim, s.num_keys, 9);
  const int32_t m = (s.num_keys + kPageTokens - 1) / kPageTokens;
  const int32_t n = std::max<int32_t>(1, m / 3);
  // Different blocks per KV head, always including the last (partial) block.
  std::vector<int32_t> blocks(size_t(s.hkv) * n);
  for (int h = 0; h < s.hkv; ++h) {
    for (int32_t i = 0; i < n; ++i) blocks[size_t(h) * n + i] = (m - 1 - i * (h + 1)) % m;
    for (int32_t i = 0; i < n; ++i) {
      if (blocks[size_t(h) * n + i] < 0) blocks[size_t(h) * n + i] += m;
    }
    std::sort(blocks.begin() + size_t(h) * n, blocks.begin() + size_t(h + 1) * n);
    auto end = std::unique(blocks.begin() + size_t(h) * n, blocks.begin() + size_t(h + 1) * n);
    // Duplicates would double-count; refill with unused ids if any collapsed.
    for (int32_t b = 0; end != blocks.begin() + size_t(h + 1) * n; ++b) {
      if (!std::binary_search(blocks.begin() + size_t(h) * n, end, b)) *end++ = b;
    }
  }
  AttentionRow row{c.page_table.data(), s.num_keys, true, blocks.data(), n, n};
  auto q = RandomVec(size_t(hq) * s.head_dim, 13);
  AttentionParams p{hq, 1.0f / std::sqrt(float(s.head_dim))};
  std::vector<float> o_ref(q.size()), o(q.size()), lse_ref(hq), lse(hq);
  PagedAttentionReference(c.layer, p, q.data(), {&row, 1}, o_ref.data(), lse_ref.data());
  PagedAttention(c.layer, p, q.data(), {&row, 1}, o.data(), lse.data());
  EXPECT_TRUE(testing::AllClose(o.data(), o_ref.data(), o.size(), testing::kF32));
  EXPECT_TRUE(testing::AllClose(lse.data(), lse_ref.data(), lse.size(), testing::kF32));
  if (n == m) {  // all blocks selected: must equal dense
    AttentionRow dense{c.page_table.data(), s.num_keys};
    std::vector<float> o_dense(q.size());
    PagedAttention(c.layer, p, q.data(), {&dense, 1}, o_dense.data(), nullptr);
    EXPECT_TRUE(testing::AllClose(o.data(), o_dense.data(), o.size(), testing::kF32));
  }
}

// Attention over all keys == LSE merge of attention over two disjoint block sets.
TEST_P(PagedAttentionTest, MergeOfPartsEqualsWhole) {
  const Shape s = GetParam();
  const int hq = s.group * s.hkv;
  Cache c = MakeCache(s.hkv, s.head_dim, s.num_keys, 21);
  const int32_t m = (s.num_keys + kPageTokens - 1) / kPageTokens;
  std::vector<int32_t> even, odd;
  for (int h = 0; h < s.hkv; ++h) {
    for (int32_t b = 0; b < m; ++b) (b % 2 == 0 ? even : odd).push_back(b);
  }
  const int32_t ne = (m + 1) / 2, no = m / 2;
  AttentionRow whole{c.page_table.data(), s.num_keys};
  AttentionRow a{c.page_table.data(), s.num_keys, true, even.data(), ne, ne};
  AttentionRow b{c.page_table.data(), s.num_keys, true, odd.data(), no, no};
  auto q = RandomVec(size_t(hq) * s.head_dim, 17);
  AttentionParams p{hq, 1.0f / std::sqrt(float(s.head_dim))};
  std::vector<float> ow(q.size()), oa(q.size()), ob(q.size()), lw(hq), la(hq), lb(hq);
  PagedAttention(c.layer, p, q.data(), {&whole, 1}, ow.data(), lw.data());
  PagedAttention(c.layer, p, q.data(), {&a, 1}, oa.data(), la.data());
  PagedAttention(c.layer, p, q.data(), {&b, 1}, ob.data(), lb.data());
  MergeAttentionStates(oa.data(), la.data(), ob.data(), lb.data(), hq, s.head_dim);
  EXPECT_TRUE(testing::AllClose(oa.data(), ow.data(), ow.size(), testing::kF32));
  EXPECT_TRUE(testing::AllClose(la.data(), lw.data(), lw.size(), testing::kF32));
}

// A chunk over a subset of its blocks (one SP rank's share): every other block plus the causal
// tail, checked against the reference with the same list as sparse rows; the complementary
// subset merges with it into the whole chunk.
TEST_P(PagedAttentionTest, ChunkSubsetMatchesReferenceAndMergesToWhole) {
  const Shape s = GetParam();
  const int hq = s.group * s.hkv;
  Cache c = MakeCache(s.hkv, s.head_dim, s.num_keys, 23);
  const int n = std::min<int32_t>(s.num_keys, 37);
  const int32_t first = s.num_keys - n + 1;
  const int32_t m = (s.num_keys + kPageTokens - 1) / kPageTokens;
  for (int32_t phase : {0, 1}) {
    // Blocks b with b % 2 == phase (an SP rank of 2); the other phase is the peer's share.
    std::vector<int32_t> mine, theirs;
    for (int32_t b = 0; b < m; ++b) (b % 2 == phase ? mine : theirs).push_back(b);
    std::vector<AttentionRow> rows;
    for (int r = 0; r < n; ++r) {
      rows.push_back(AttentionRow{c.page_table.data(), first + r, true, mine.data(),
                                  int32_t(mine.size()), 0});
    }
    auto q = RandomVec(size_t(n) * hq * s.head_dim, 29);
    AttentionParams p{hq, 1.0f / std::sqrt(float(s.head_dim))};
    std::vector<float> o_ref(q.size()), o(q.size()), lse_ref(size_t(n) * hq), lse(lse_ref.size());
    PagedAttentionReference(c.layer, p, q.data(), rows, o_ref.data(), lse_ref.data());
    PagedChunkAttention(c.layer, p, q.data(), n, c.page_table.data(), first, mine, o.data(),
                        lse.data());
    EXPECT_TRUE(testing::AllClose(o.data(), o_ref.data(), o.size(), testing::kF32));
    for (size_t i = 0; i < lse.size(); ++i) {
      if (std::isinf(lse_ref[i])) {
        EXPECT_EQ(lse[i], lse_ref[i]) << "row-head " << i;  // no visible key: -inf, O = 0
      } else {
        EXPECT_NEAR(lse[i], lse_ref[i], 1e-4f + 1e-5f * std::abs(lse_ref[i])) << i;
      }
    }
    std::vector<float> o_peer(q.size()), lse_peer(lse.size()), o_whole(q.size()),
        lse_whole(lse.size());
    PagedChunkAttention(c.layer, p, q.data(), n, c.page_table.data(), first, theirs,
                        o_peer.data(), lse_peer.data());
    PagedChunkAttention(c.layer, p, q.data(), n, c.page_table.data(), first, o_whole.data(),
                        lse_whole.data());
    MergeAttentionStates(o.data(), lse.data(), o_peer.data(), lse_peer.data(), n * hq,
                         s.head_dim);
    EXPECT_TRUE(testing::AllClose(o.data(), o_whole.data(), o.size(), testing::kF32));
    EXPECT_TRUE(testing::AllClose(lse.data(), lse_whole.data(), lse.size(), testing::kF32));
  }
}

// Listing every block is the plain chunk kernel, bit for bit.
TEST_P(PagedAttentionTest, ChunkSubsetOfAllBlocksIsBitIdentical) {
  const Shape s = GetParam();
  const int hq = s.group * s.hkv;
  Cache c = MakeCache(s.hkv, s.head_dim, s.num_keys, 31);
  const int n = std::min<int32_t>(s.num_keys, 19);
  const int32_t first = s.num_keys - n + 1;
  std::vector<int32_t> all((s.num_keys + kPageTokens - 1) / kPageTokens);
  std::iota(all.begin(), all.end(), 0);
  auto q = RandomVec(size_t(n) * hq * s.head_dim, 37);
  AttentionParams p{hq, 1.0f / std::sqrt(float(s.head_dim))};
  std::vector<float> o1(q.size()), o2(q.size()), l1(size_t(n) * hq), l2(l1.size());
  PagedChunkAttention(c.layer, p, q.data(), n, c.page_table.data(), first, o1.data(), l1.data());
  PagedChunkAttention(c.layer, p, q.data(), n, c.page_table.data(), first, all, o2.data(),
                      l2.data());
  EXPECT_EQ(0, std::memcmp(o1.data(), o2.data(), o1.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(l1.data(), l2.data(), l1.size() * sizeof(float)));
}

INSTANTIATE_TEST_SUITE_P(Shapes, PagedAttentionTest,
                         ::testing::Values(Shape{1, 64, 3, 3}, Shape{15, 64, 3, 1},
                                           Shape{16, 128, 6, 2}, Shape{17, 128, 7, 4},
                                           Shape{37, 64, 1, 2}, Shape{4097, 64, 3, 3},
                                           Shape{1000, 128, 6, 2}),
                         [](const auto& info) {
                           const Shape& s = info.param;
                           return "L" + std::to_string(s.num_keys) + "_d" +
                                  std::to_string(s.head_dim) + "_g" + std::to_string(s.group) +
                                  "_kv" + std::to_string(s.hkv);
                         });

TEST(MergeAttentionStates, EmptyPartialsMergeAsZero) {
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> oa = {0, 0}, ob = {3, 4};
  std::vector<float> la = {ninf}, lb = {ninf};
  MergeAttentionStates(oa.data(), la.data(), ob.data(), lb.data(), 1, 2);
  EXPECT_EQ(oa[0], 0.0f);
  EXPECT_EQ(oa[1], 0.0f);
  EXPECT_EQ(la[0], ninf);
  lb[0] = 0.5f;
  MergeAttentionStates(oa.data(), la.data(), ob.data(), lb.data(), 1, 2);
  EXPECT_EQ(oa[0], 3.0f);
  EXPECT_EQ(oa[1], 4.0f);
  EXPECT_EQ(la[0], 0.5f);
}

// An SP rank that owns none of a chunk's blocks (or only blocks past a row's causal end)
// contributes O = 0, lse = -inf, and merging it changes nothing.
TEST(PagedChunkAttention, EmptySubsetsAndRowsBeforeTheirBlocksMergeAsZero) {
  const int hkv = 2, d = 32, hq = 4, n = 5;
  Cache c = MakeCache(hkv, d, 35, 41);  // blocks 0, 1, 2 (the last holds positions 32..34)
  const int32_t first = 31;             // rows see 31..35 keys: only rows 2.. reach block 2
  auto q = RandomVec(size_t(n) * hq * d, 43);
  AttentionParams p{hq, 1.0f / std::sqrt(float(d))};
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> o(q.size(), 7.0f), lse(size_t(n) * hq, 7.0f);
  PagedChunkAttention(c.layer, p, q.data(), n, c.page_table.data(), first,
                      std::span<const int32_t>(), o.data(), lse.data());
  for (float x : o) EXPECT_EQ(x, 0.0f);
  for (float x : lse) EXPECT_EQ(x, ninf);

  const std::vector<int32_t> tail = {2};
  PagedChunkAttention(c.layer, p, q.data(), n, c.page_table.data(), first, tail, o.data(),
                      lse.data());
  for (int r = 0; r < n; ++r) {
    for (int j = 0; j < hq; ++j) {
      const float l = lse[size_t(r) * hq + j];
      if (first + r <= 32) {  // row r sees positions < first + r: none of block 2
        EXPECT_EQ(l, ninf) << "row " << r;
        for (int k = 0; k < d; ++k) EXPECT_EQ(o[(size_t(r) * hq + j) * d + k], 0.0f);
      } else {
        EXPECT_TRUE(std::isfinite(l)) << "row " << r;
      }
    }
  }
  std::vector<float> ow(q.size()), lw(lse.size());
  PagedChunkAttention(c.layer, p, q.data(), n, c.page_table.data(), first, ow.data(), lw.data());
  std::vector<float> oe(q.size(), 0.0f), le(lse.size(), ninf), ow2 = ow, lw2 = lw;
  MergeAttentionStates(ow2.data(), lw2.data(), oe.data(), le.data(), n * hq, d);
  EXPECT_EQ(ow2, ow);
  EXPECT_EQ(lw2, lw);
}

TEST(PagedAttention, RowWithNoKeysIsZeroWithNegInfLse) {
  Cache c = MakeCache(1, 64, 16, 1);
  AttentionRow row{c.page_table.data(), 0};
  auto q = RandomVec(64, 2);
  std::vector<float> o(64, 1.0f), lse(1, 0.0f);
  PagedAttention(c.layer, AttentionParams{1, 0.125f}, q.data(), {&row, 1}, o.data(), lse.data());
  for (float x : o) EXPECT_EQ(x, 0.0f);
  EXPECT_EQ(lse[0], -std::numeric_limits<float>::infinity());
}

}  // namespace
}  // namespace resa
