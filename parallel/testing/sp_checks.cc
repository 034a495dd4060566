#include "parallel/testing/sp_checks.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/selection.h"
#include "kernels/testing/tolerance.h"
#include "parallel/sp_attention.h"

namespace resa::testing {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Raw mt19937 output only: the same sequence in every process and with every standard library.
class Rng {
 public:
  explicit Rng(uint32_t seed) : g_(seed) {}
  uint32_t Next() { return uint32_t(g_()); }
  int Int(int lo, int hi) { return lo + int(Next() % uint32_t(hi - lo + 1)); }
  float Uniform() { return float(Next() >> 8) * (2.0f / float(1 << 24)) - 1.0f; }

 private:
  std::mt19937 g_;
};

// A paged KV layer with its own storage.
struct Cache {
  Cache(int hkv, int d, int32_t pages)
      : k(size_t(pages) * hkv * kPageTokens * d),
        v(k.size()),
        summary(size_t(pages) * hkv * 2 * d),
        layer{k.data(), v.data(), summary.data(), hkv, d} {}
  std::vector<float> k, v, summary;
  PagedKvLayer layer;
};

// The whole sequence on one rank: pages in a shuffled physical order, written token by token.
struct Sequence {
  Sequence(int hkv, int d, int32_t num_keys, Rng& rng, bool integer_keys)
      : num_keys(num_keys),
        num_blocks((num_keys + kPageTokens - 1) / kPageTokens),
        cache(hkv, d, num_blocks),
        table(size_t(num_blocks)) {
    std::iota(table.begin(), table.end(), 0);
    for (int32_t i = num_blocks - 1; i > 0; --i) std::swap(table[i], table[rng.Next() % (i + 1)]);
    std::vector<float> kt(size_t(hkv) * d), vt(kt.size());
    for (int32_t t = 0; t < num_keys; ++t) {
      for (float& x : kt) x = integer_keys ? float(rng.Int(-2, 2)) : rng.Uniform();
      for (float& x : vt) x = rng.Uniform();
      WriteTokenKv(cache.layer, table[size_t(t / kPageTokens)], t % kPageTokens, kt.data(),
                   vt.data());
    }
  }
  int32_t num_keys;
  int32_t num_blocks;
  Cache cache;
  std::vector<int32_t> table;  // logical block -> physical page
};

// What one SP rank holds of a Sequence: its pages, stored in reverse local order.
struct Shard {
  Shard(const Sequence& seq, const SequenceShard& s)
      : shard(s),
        m(s.NumLocalBlocks(seq.num_blocks)),
        cache(seq.cache.layer.num_kv_heads, seq.cache.layer.head_dim, std::max(m, 1)),
        local_table(size_t(m)) {
    const PagedKvLayer& src = seq.cache.layer;
    const size_t page = src.page_elems();
    const size_t sum = size_t(src.num_kv_heads) * 2 * src.head_dim;
    for (int32_t j = 0; j < m; ++j) {
      local_table[size_t(j)] = m - 1 - j;
      const int32_t from = seq.table[size_t(s.GlobalBlock(j))];
      const int32_t to = local_table[size_t(j)];
      std::copy_n(src.k + from * page, page, cache.k.data() + to * page);
      std::copy_n(src.v + from * page, page, cache.v.data() + to * page);
      std::copy_n(src.summary + from * sum, sum, cache.summary.data() + to * sum);
    }
    expanded = ExpandLocalPageTable(s, local_table.data(), seq.num_blocks);
  }
  SequenceShard shard;
  int32_t m;
  Cache cache;
  std::vector<int32_t> local_table;
  std::vector<int32_t> expanded;
};

// Every rank must hold exactly the same floats.
void ExpectIdenticalOnAllRanks(Communicator& sp, const std::vector<float>& mine) {
  std::vector<float> all(mine.size() * size_t(sp.size()));
  ASSERT_TRUE(sp.AllGather(DataType::kFloat32, mine.data(), all.data(), mine.size()).ok());
  for (int r = 0; r < sp.size(); ++r) {
    EXPECT_EQ(
        std::memcmp(all.data() + size_t(r) * mine.size(), mine.data(), mine.size() * sizeof(float)),
        0)
        << "rank " << r << " holds a different merged state than rank " << sp.rank();
  }
}

bool AnyNan(const std::vector<float>& v) {
  return std::any_of(v.begin(), v.end(), [](float x) { return std::isnan(x); });
}

}  // namespace

void CheckDistributedSelection(Communicator& sp, uint32_t seed) {
  const SequenceShard shard{sp.rank(), sp.size()};
  Rng rng(seed);
  Rng local_rng(seed * 31 + uint32_t(sp.rank()) + 1);  // differs per rank: local block order
  const float values[] = {0.0f, -0.0f, 1.0f, 2.0f, 3.0f, -1.0f, 1e30f};
  for (int32_t m : {1, 2, 3, 5, 16, 17, 40, 101, 403}) {
    for (int hkv : {1, 3}) {
      std::vector<float> scores(size_t(hkv) * m);
      for (float& s : scores) s = values[rng.Next() % 7];
      if (m % 2 == 1) {
        for (int h = 0; h < hkv; ++h) scores[size_t(h) * m + m - 1] = kInf;  // current block
      }
      std::vector<int32_t> owned = OwnedBlocks(shard, m);
      for (size_t i = owned.size(); i > 1; --i) {
        std::swap(owned[i - 1], owned[local_rng.Next() % i]);
      }
      std::vector<float> local(size_t(hkv) * owned.size());
      for (int h = 0; h < hkv; ++h) {
        for (size_t j = 0; j < owned.size(); ++j) {
          local[size_t(h) * owned.size() + j] = scores[size_t(h) * m + owned[j]];
        }
      }
      std::vector<int32_t> ns = {1, m / 3 + 1, m, NumSelectedBlocks(m, 0.1f, 16)};
      std::sort(ns.begin(), ns.end());
      ns.erase(std::unique(ns.begin(), ns.end()), ns.end());
      for (int32_t n : ns) {
        std::vector<int32_t> want(size_t(hkv) * n), want_ref(want.size()), got(want.size(), -7);
        TopBlocks(scores.data(), hkv, m, n, want.data());
        TopBlocksReference(scores.data(), hkv, m, n, want_ref.data());
        ASSERT_EQ(want, want_ref);
        const absl::Status st =
            SelectBlocksAcrossRanks(sp, local.data(), owned, hkv, n, got.data());
        ASSERT_TRUE(st.ok()) << st;
        EXPECT_EQ(got, want) << "M " << m << " heads " << hkv << " n " << n << " S " << sp.size();
      }
    }
  }
  // A batch: several sequences of different lengths x heads, one exchange for all rows.
  {
    struct Seq {
      int32_t m, n;
      std::vector<float> scores;  // [hkv][m]
      std::vector<int32_t> owned, want, got;
      std::vector<float> local;  // [hkv][owned]
    };
    const int hkv = 2;
    std::vector<Seq> seqs;
    for (int32_t m : {7, 1, 33}) {
      Seq q{m, NumSelectedBlocks(m, 0.3f, 2), std::vector<float>(size_t(hkv) * m), {}, {}, {}, {}};
      for (float& x : q.scores) x = values[rng.Next() % 7];
      q.owned = OwnedBlocks(shard, m);
      q.want.resize(size_t(hkv) * q.n);
      q.got.assign(q.want.size(), -7);
      TopBlocks(q.scores.data(), hkv, m, q.n, q.want.data());
      for (int h = 0; h < hkv; ++h) {
        for (int32_t b : q.owned) q.local.push_back(q.scores[size_t(h) * m + b]);
      }
      seqs.push_back(std::move(q));
    }
    std::vector<SelectionRow> rows;
    for (Seq& q : seqs) {
      const int32_t own = int32_t(q.owned.size());
      for (int h = 0; h < hkv; ++h) {
        rows.push_back({q.local.data() + size_t(h) * own, q.owned.data(), own, q.n,
                        q.got.data() + size_t(h) * q.n});
      }
    }
    const absl::Status st = SelectBlocksAcrossRanks(sp, rows);
    ASSERT_TRUE(st.ok()) << st;
    for (const Seq& q : seqs) EXPECT_EQ(q.got, q.want) << "batch, M " << q.m << " S " << sp.size();
  }
  // Ranks that disagree on the rows' n (with the same payload size) all fail, naming the
  // disagreement; the communicator stays usable. (A disagreement that changes the payload size
  // is a collective mismatch: the fake reports it, MPI's behaviour is undefined.)
  if (sp.size() > 1) {
    const bool odd = sp.rank() == 0;
    std::vector<int32_t> owned = OwnedBlocks(shard, 8);
    std::vector<float> local(owned.size(), 1.0f);
    int32_t out_a[2], out_b[2];
    const int32_t own = int32_t(owned.size());
    const SelectionRow rows[2] = {{local.data(), owned.data(), own, odd ? 2 : 1, out_a},
                                  {local.data(), owned.data(), own, odd ? 1 : 2, out_b}};
    const absl::Status st = SelectBlocksAcrossRanks(sp, rows);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_NE(st.message().find("every rank must pass the same rows and n"), std::string::npos)
        << st;
    EXPECT_TRUE(sp.health().ok());
  }
}

void CheckShardedDenseAttention(Communicator& sp, uint32_t seed) {
  const SequenceShard s{sp.rank(), sp.size()};
  const int hkv = 2, heads = 4, d = 24;
  const AttentionParams params{heads, 1.0f / std::sqrt(float(d))};
  Rng rng(seed);
  for (int32_t num_keys : {1, 15, 16, 17, 100, 257}) {
    const Sequence seq(hkv, d, num_keys, rng, /*integer_keys=*/false);
    // A causal chunk of up to 3 rows ending at num_keys (decode is the 1-row case).
    const int rows = std::min(3, num_keys);
    std::vector<float> q(size_t(rows) * heads * d);
    for (float& x : q) x = rng.Uniform();
    std::vector<AttentionRow> whole(static_cast<size_t>(rows));
    for (int i = 0; i < rows; ++i) {
      whole[size_t(i)].page_table = seq.table.data();
      whole[size_t(i)].num_keys = num_keys - (rows - 1 - i);
    }
    std::vector<float> want_o(q.size()), want_lse(size_t(rows) * heads);
    PagedAttentionReference(seq.cache.layer, params, q.data(), whole, want_o.data(),
                            want_lse.data());

    const Shard shard(seq, s);
    const std::vector<int32_t> owned = OwnedBlocks(s, seq.num_blocks);
    std::vector<AttentionRow> mine(static_cast<size_t>(rows));
    for (int i = 0; i < rows; ++i) {
      mine[size_t(i)] = {shard.expanded.data(), whole[size_t(i)].num_keys, true,
                         owned.data(),          int32_t(owned.size()),     0};
    }
    std::vector<float> o(q.size()), lse(want_lse.size());
    PagedAttention(shard.cache.layer, params, q.data(), mine, o.data(), lse.data());
    const absl::Status st =
        MergeAttentionStatesAcrossRanks(sp, o.data(), lse.data(), rows * heads, d);
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_FALSE(AnyNan(o) || AnyNan(lse));
    EXPECT_TRUE(AllClose(o.data(), want_o.data(), o.size(), kF32)) << "keys " << num_keys;
    EXPECT_TRUE(AllClose(lse.data(), want_lse.data(), lse.size(), kF32)) << "keys " << num_keys;
    std::vector<float> both = o;
    both.insert(both.end(), lse.begin(), lse.end());
    ExpectIdenticalOnAllRanks(sp, both);
  }
  // Every rank empty: O = 0, lse = -inf.
  std::vector<float> o(8, 0.5f), lse(2, -kInf);
  ASSERT_TRUE(MergeAttentionStatesAcrossRanks(sp, o.data(), lse.data(), 2, 4).ok());
  EXPECT_EQ(o, std::vector<float>(8, sp.size() == 1 ? 0.5f : 0.0f));
  EXPECT_EQ(lse, std::vector<float>(2, -kInf));
}

void CheckShardedSparseStep(Communicator& sp, uint32_t seed) {
  const SequenceShard s{sp.rank(), sp.size()};
  const int hkv = 2, heads = 4, d = 16;
  const AttentionParams params{heads, 1.0f / std::sqrt(float(d))};
  Rng rng(seed);
  for (int32_t num_keys : {5, 16, 33, 160, 300}) {
    const Sequence seq(hkv, d, num_keys, rng, /*integer_keys=*/true);
    const int32_t m = seq.num_blocks;
    const int32_t n = NumSelectedBlocks(m, 0.25f, 3);
    std::vector<float> q(size_t(heads) * d), pooled(size_t(hkv) * d);
    for (float& x : q) x = rng.Uniform();
    for (float& x : pooled) x = float(rng.Int(-1, 1));

    // Single rank: score, select, attend.
    std::vector<float> scores(size_t(hkv) * m);
    ScoreBlocks(seq.cache.layer, pooled.data(), seq.table.data(), num_keys, scores.data());
    std::vector<int32_t> want_sel(size_t(hkv) * n);
    TopBlocks(scores.data(), hkv, m, n, want_sel.data());
    const AttentionRow whole{seq.table.data(), num_keys, true, want_sel.data(), n, n};
    std::vector<float> want_o(q.size()), want_lse(static_cast<size_t>(heads));
    PagedAttentionReference(seq.cache.layer, params, q.data(), {&whole, 1}, want_o.data(),
                            want_lse.data());

    // This rank's share of the same step.
    const Shard shard(seq, s);
    std::vector<float> local_scores(size_t(hkv) * shard.m);
    ScoreLocalBlocks(shard.cache.layer, pooled.data(), shard.local_table.data(), num_keys, s,
                     local_scores.data());
    for (int h = 0; h < hkv; ++h) {
      for (int32_t j = 0; j < shard.m; ++j) {
        const float a = local_scores[size_t(h) * shard.m + j];
        const float b = scores[size_t(h) * m + s.GlobalBlock(j)];
        ASSERT_EQ(std::memcmp(&a, &b, sizeof(float)), 0)
            << "head " << h << " block " << s.GlobalBlock(j) << ": " << a << " vs " << b;
      }
    }
    const std::vector<int32_t> owned = OwnedBlocks(s, m);
    std::vector<int32_t> sel(want_sel.size());
    absl::Status st = SelectBlocksAcrossRanks(sp, local_scores.data(), owned, hkv, n, sel.data());
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_EQ(sel, want_sel) << "keys " << num_keys << " n " << n;
    std::vector<int32_t> mine;
    const int32_t stride = OwnedSelection(s, sel.data(), hkv, n, m, &mine);
    const AttentionRow row{shard.expanded.data(), num_keys, true, mine.data(), stride, stride};
    std::vector<float> o(q.size()), lse(static_cast<size_t>(heads));
    PagedAttention(shard.cache.layer, params, q.data(), {&row, 1}, o.data(), lse.data());
    st = MergeAttentionStatesAcrossRanks(sp, o.data(), lse.data(), heads, d);
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_FALSE(AnyNan(o) || AnyNan(lse));
    EXPECT_TRUE(AllClose(o.data(), want_o.data(), o.size(), kF32)) << "keys " << num_keys;
    EXPECT_TRUE(AllClose(lse.data(), want_lse.data(), lse.size(), kF32)) << "keys " << num_keys;
  }
}

}  // namespace resa::testing
