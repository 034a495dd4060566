// CUDA K/V writes, summaries and fused block selection vs the CPU twins (kernels/cpu/selection.h).
// Keys and queries are small integers, so every score is exact in fp32 and the GPU selection
// must equal TopBlocks id for id, ties (many, by construction) included.
#include "kernels/cuda/selection_cuda.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/selection.h"
#include "kernels/cuda/cuda_test_util.h"

namespace resa::cuda {
namespace {

using testing::BuildCache;
using testing::CudaTest;
using testing::DeviceBuffer;
using testing::PageOrder;
using testing::TestCache;
using testing::ToBf16;

auto SmallInts(int lo, int hi) {
  return [u = std::uniform_int_distribution<int>(lo, hi)](std::mt19937& rng) mutable {
    return float(u(rng));
  };
}

// Queries [batch][hkv * g][d] of small integers whose group means (pooled, [batch][hkv][d]) are
// exact integers: each group's heads are pooled + deltas that sum to zero.
void IntegerQueries(int batch, int hkv, int g, int d, std::mt19937& rng, std::vector<float>* q,
                    std::vector<float>* pooled) {
  std::uniform_int_distribution<int> small(-3, 3);
  const int hq = hkv * g;
  q->assign(size_t(batch) * hq * d, 0.0f);
  pooled->assign(size_t(batch) * hkv * d, 0.0f);
  for (int b = 0; b < batch; ++b) {
    for (int h = 0; h < hkv; ++h) {
      for (int i = 0; i < d; ++i) {
        const float base = float(small(rng));
        (*pooled)[(size_t(b) * hkv + h) * d + i] = base;
        for (int j = 0; j < g; ++j) {
          const float delta = j + 1 < g ? float((j % 2 == 0 ? 1 : -1) * (j / 2 + 1)) : 0.0f;
          (*q)[((size_t(b) * hq) + h * g + j) * d + i] = base + delta;
        }
        if (g % 2 == 0) {  // deltas +1, -1, +2, -2, ..., +g/2 so far: the last one cancels it
          (*q)[((size_t(b) * hq) + h * g + g - 1) * d + i] = base - float(g / 2);
        }
      }
    }
  }
}

struct SelectCase {
  std::string name;
  std::vector<int32_t> lens;
  int d;
  int group;
  float ratio;
  int key_range = 2;  // keys drawn from [-key_range, key_range]; 0: every score ties
  PageOrder order = PageOrder::kShuffled;
};

// "_grouped" for PageOrder::kGrouped (the selection's fast path), nothing for kShuffled.
std::string OrderSuffix(PageOrder order) { return order == PageOrder::kGrouped ? "_grouped" : ""; }

// The cases, then each again with grouped pages: both the selection's general path (pages
// shuffled) and its fast path (a sequence's 64 blocks on one aligned summary group) are
// compared with the CPU twin.
template <typename Case>
std::vector<Case> WithBothPageOrders(std::vector<Case> cases) {
  const size_t n = cases.size();
  for (size_t i = 0; i < n; ++i) {
    Case c = cases[i];
    c.order = PageOrder::kGrouped;
    cases.push_back(std::move(c));
  }
  return cases;
}

std::string SelectName(const ::testing::TestParamInfo<SelectCase>& info) {
  const SelectCase& c = info.param;
  return c.name + "_d" + std::to_string(c.d) + "_g" + std::to_string(c.group) + "_r" +
         std::to_string(int(c.ratio * 100)) + OrderSuffix(c.order);
}

std::vector<SelectCase> SelectCases() {
  std::vector<SelectCase> cases;
  std::mt19937 rng(3);
  std::vector<int32_t> ragged8;
  for (int i = 0; i < 8; ++i) ragged8.push_back(1 + int32_t(rng() % 70000));
  for (int d : {64, 128}) {
    for (int g : {3, 6, 7}) {
      cases.push_back({"short", {1, 15, 16, 17, 4097}, d, g, 0.1f});
      cases.push_back({"ragged8", ragged8, d, g, 0.1f});
    }
    cases.push_back({"len262144", {262144}, d, 7, 0.1f});      // 16384 blocks: keys in smem
    cases.push_back({"len300001", {300001, 33}, d, 6, 0.1f});  // keys selected from L2
  }
  // Wide key range: many distinct scores, so the pivot bin is small and ranked directly.
  cases.push_back({"spread", {262144, 70001, 4097}, 128, 7, 0.1f, 100});
  cases.push_back({"spread_l2", {300001}, 64, 3, 0.1f, 100});
  // Keys in {-1, 0, 1}: few distinct scores, large pivot bins, several radix passes.
  cases.push_back({"clustered", {262144, 9000}, 64, 6, 0.1f, 1});
  // Up to 4 sequences (8 rows) run the latency kernel, and up to 16 (32 rows) when one row has
  // >= 8192 blocks; more the throughput kernel. Short rows on the first; rows past 16384 blocks
  // (keys in L2) on both: 10 rows on the latency kernel, 34 on the throughput kernel.
  cases.push_back({"short_few", {1, 17, 4097}, 128, 7, 0.1f});
  cases.push_back({"long_l2", {300001, 1, 4097, 33, 70001}, 64, 3, 0.1f, 100});
  cases.push_back({"wide_l2",
                   {300001, 1, 4097, 33, 70001, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13},
                   64,
                   3,
                   0.1f,
                   100});
  // 10 rows, the longest 8193 blocks: the latency kernel with 3 chunks a CTA and a hint for
  // that row (launches of up to 16 rows use them).
  cases.push_back({"long_few", {131073, 17, 4097, 33, 1}, 128, 7, 0.1f, 100});
  cases.push_back({"half", {4097, 5000, 161 * 16}, 128, 6, 0.5f});
  cases.push_back({"all_tied", {4097, 20000, 17}, 64, 3, 0.1f, 0});  // order decides everything
  return WithBothPageOrders(std::move(cases));
}

class SelectBlocksTest : public CudaTest, public ::testing::WithParamInterface<SelectCase> {};

TEST_P(SelectBlocksTest, EqualsCpuTopBlocksExactly) {
  const SelectCase& tc = GetParam();
  const int hkv = 2, g = tc.group, hq = hkv * g, d = tc.d;
  const int batch = int(tc.lens.size());
  std::vector<int32_t> before(batch);
  for (int b = 0; b < batch; ++b) before[b] = tc.lens[b] - 1;
  TestCache cache;
  BuildCache(cache, hkv, d, tc.lens, 5, SmallInts(-tc.key_range, tc.key_range), &before, 1,
             tc.order);

  std::mt19937 rng(6);
  std::uniform_int_distribution<int> small(-3, 3);
  std::vector<float> knew(size_t(batch) * hkv * d), vnew(knew.size()), q, pooled;
  for (auto& x : knew) x = tc.key_range == 0 ? 0.0f : float(small(rng));
  for (auto& x : vnew) x = float(small(rng));
  IntegerQueries(batch, hkv, g, d, rng, &q, &pooled);

  // CPU twin: write, score, select. exact_hint: each row's (n - 1)-th largest score over blocks
  // [0, M - 1) (the tail's threshold) over the pooled query's L1 norm, as fp32 bits (a hint), 0
  // when the row keeps every block. hinted_rows: rows whose length lets them use a hint.
  std::vector<std::vector<int32_t>> want(batch);
  std::vector<uint32_t> exact_hint(size_t(batch) * hkv, 0u);
  int64_t hinted_rows = 0;
  for (int b = 0; b < batch; ++b) {
    const int32_t pos = tc.lens[b] - 1;
    WriteTokenKv(cache.cpu, cache.table(b)[pos / kPageTokens], pos % kPageTokens,
                 knew.data() + size_t(b) * hkv * d, vnew.data() + size_t(b) * hkv * d);
    const int32_t m = (tc.lens[b] + kPageTokens - 1) / kPageTokens;
    std::vector<float> scores(size_t(hkv) * m);
    ScoreBlocks(cache.cpu, pooled.data() + size_t(b) * hkv * d, cache.table(b), tc.lens[b],
                scores.data());
    const int32_t n = NumSelectedBlocks(m, tc.ratio, 16);
    want[b].resize(size_t(hkv) * n);
    TopBlocks(scores.data(), hkv, m, n, want[b].data());
    if (n > 1 && n < m && m - 1 >= 8192 && m - 1 <= 16384) hinted_rows += hkv;
    for (int h = 0; h < hkv && n > 1 && n < m; ++h) {
      std::vector<float> row(scores.begin() + size_t(h) * m,
                             scores.begin() + size_t(h) * m + m - 1);
      std::nth_element(row.begin(), row.begin() + (n - 2), row.end(), std::greater<float>());
      float l1 = 0.0f;
      for (int i = 0; i < d; ++i) l1 += std::fabs(pooled[(size_t(b) * hkv + h) * d + i]);
      const float ratio = l1 > 0.0f ? row[n - 2] / l1 : 0.0f;
      std::memcpy(&exact_hint[size_t(b) * hkv + h], &ratio, 4);
    }
  }

  DeviceBuffer<uint16_t> dq(ToBf16(q)), dk(ToBf16(knew)), dv(ToBf16(vnew));
  SelectBlocksParams p;
  p.kv = cache.gpu();
  p.q = testing::AsBf16(dq.get());
  p.k_new = testing::AsBf16(dk.get());
  p.v_new = testing::AsBf16(dv.get());
  p.batch = batch;
  p.num_heads = hq;
  p.num_keys = cache.dlens.get();
  p.page_tables = cache.dtables.get();
  p.page_table_stride = cache.page_table_stride;
  p.max_num_keys = cache.max_len();
  p.ratio = tc.ratio;
  p.min_blocks = 16;
  p.blocks_stride =
      NumSelectedBlocksCuda((p.max_num_keys + kPageTokens - 1) / kPageTokens, tc.ratio, 16);
  DeviceBuffer<int32_t> dblocks(size_t(batch) * hkv * p.blocks_stride), dnum(batch);
  p.blocks = dblocks.get();
  p.num_blocks = dnum.get();
  DeviceBuffer<uint32_t> dhints(size_t(batch) * hkv);
  p.hints = dhints.get();  // the workspace with room for the hinted tail's flags
  DeviceBuffer<char> ws(SelectBlocksWorkspaceBytes(p));
  p.hints = nullptr;
  ws.Fill(0);
  p.workspace = ws.get();
  p.workspace_bytes = ws.size();
  // Runs 0-1 without hints (the second checks that the counters were reset); then with hints,
  // which must not change a single id whatever they hold: zero (every score >= 0 a candidate),
  // the hints run 2 left (the next step's hints of an identical step), all ones (NaN: no
  // candidate), each row's threshold (ties at it), its bits + 1 and - 1 (one ulp off). Odd runs
  // let the next kernel be scheduled after the scoring (early_dependents), which must not change
  // an id either.
  const char* kHintNames[] = {"none",
                              "none",
                              "zero",
                              "left by the last run",
                              "all ones",
                              "threshold",
                              "threshold bits + 1",
                              "threshold bits - 1"};
  auto hinted_tally = [](bool histogram) {
    auto c = ReadSelectionHintCounts();
    return c.ok() ? (histogram ? c->from_histogram : c->from_candidates) : int64_t(-1);
  };
  int64_t hinted_repeat = 0, histogram_repeat = 0;
  for (int rep = 0; rep < 8; ++rep) {
    p.hints = rep < 2 ? nullptr : dhints.get();
    p.early_dependents = rep % 2 == 1;  // scheduling only: the same ids
    std::vector<uint32_t> h = exact_hint;
    if (rep == 2) dhints.Fill(0);
    if (rep == 4) dhints.Fill(0xff);
    if (rep >= 5) {
      for (uint32_t& x : h) x += rep == 5 ? 0u : rep == 6 ? 1u : uint32_t(-1);
      dhints.Upload(h);
    }
    dblocks.Fill(0xff);
    const int64_t hinted_before = hinted_tally(false), histogram_before = hinted_tally(true);
    ASSERT_TRUE(SelectBlocksCuda(p, nullptr).ok());
    if (rep == 3) {
      hinted_repeat = hinted_tally(false) - hinted_before;
      histogram_repeat = hinted_tally(true) - histogram_before;
    }
    const std::vector<int32_t> got = dblocks.Download(), got_n = dnum.Download();
    for (int b = 0; b < batch; ++b) {
      const int32_t n = int32_t(want[b].size() / hkv);
      ASSERT_EQ(got_n[b], n) << "sequence " << b;
      for (int h = 0; h < hkv; ++h) {
        const std::vector<int32_t> w(want[b].begin() + size_t(h) * n,
                                     want[b].begin() + size_t(h + 1) * n);
        const std::vector<int32_t> gv(got.begin() + (size_t(b) * hkv + h) * p.blocks_stride,
                                      got.begin() + (size_t(b) * hkv + h) * p.blocks_stride + n);
        ASSERT_EQ(gv, w) << "run " << rep << " (hints: " << kHintNames[rep]
                         << ", early dependents: " << p.early_dependents << ") sequence " << b
                         << " (len " << tc.lens[b] << ") head " << h;
      }
    }
  }
  // Spread scores (few ties): an identical step's hints leave few enough candidates, so every
  // row of 8193-16385 blocks (here on the latency kernel: <= 16 rows) ranks only those.
  if (tc.name == "spread" || tc.name == "long_few") {
    EXPECT_GT(hinted_rows, 0);
    EXPECT_EQ(hinted_repeat, hinted_rows) << "rows that took the hinted tail";
    // The hints left by run 2 carry the histogram's shift for this step's threshold, so the
    // scoring's histogram places it (its pivot bin small) in some rows at least.
    EXPECT_GT(histogram_repeat, 0) << "rows whose threshold the histogram placed";
  }
  // The fused write left K, V and the summary exactly as WriteTokenKv did (the summary
  // compared in the device layout).
  const std::vector<uint16_t> gk = cache.dk.Download(), gv = cache.dv.Download(),
                              gs = cache.dsummary.Download(),
                              want_s = testing::ToDeviceSummary(cache.summary, hkv, d);
  for (int b = 0; b < batch; ++b) {
    const int32_t pos = tc.lens[b] - 1, page = cache.table(b)[pos / kPageTokens];
    for (int h = 0; h < hkv; ++h) {
      const size_t kv_off = ((size_t(page) * hkv + h) * kPageTokens + pos % kPageTokens) * d;
      for (int i = 0; i < d; ++i) {
        ASSERT_EQ(gk[kv_off + i], ToBf16(cache.k[kv_off + i]));
        ASSERT_EQ(gv[kv_off + i], ToBf16(cache.v[kv_off + i]));
        const size_t lo = SummaryIndex(page, h, 0, i, hkv, d),
                     hi = SummaryIndex(page, h, 1, i, hkv, d);
        ASSERT_EQ(gs[lo], want_s[lo]) << "min, dim " << i;
        ASSERT_EQ(gs[hi], want_s[hi]) << "max, dim " << i;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, SelectBlocksTest, ::testing::ValuesIn(SelectCases()), SelectName);

// After a write: the device K, V and summaries (device layout) of every sequence's first
// lens[s] tokens equal the CPU twin's, bit for bit.
void ExpectCacheEqualsTwin(const TestCache& cache, const std::vector<int32_t>& lens) {
  const int hkv = cache.hkv, d = cache.d;
  const std::vector<uint16_t> gk = cache.dk.Download(), gv = cache.dv.Download(),
                              gs = cache.dsummary.Download(),
                              want_s = testing::ToDeviceSummary(cache.summary, hkv, d);
  for (size_t s = 0; s < lens.size(); ++s) {
    for (int32_t pos = 0; pos < lens[s]; ++pos) {
      const int32_t page = cache.table(s)[pos / kPageTokens];
      for (int h = 0; h < hkv; ++h) {
        const size_t off = ((size_t(page) * hkv + h) * kPageTokens + pos % kPageTokens) * d;
        for (int i = 0; i < d; ++i) {
          ASSERT_EQ(gk[off + i], ToBf16(cache.k[off + i])) << "seq " << s << " pos " << pos;
          ASSERT_EQ(gv[off + i], ToBf16(cache.v[off + i])) << "seq " << s << " pos " << pos;
        }
      }
    }
    for (int32_t blk = 0; blk * kPageTokens < lens[s]; ++blk) {
      const int32_t page = cache.table(s)[blk];
      for (int h = 0; h < hkv; ++h) {
        for (int part = 0; part < 2; ++part) {
          for (int i = 0; i < d; ++i) {
            const size_t off = SummaryIndex(page, h, part, i, hkv, d);
            ASSERT_EQ(gs[off], want_s[off]) << "seq " << s << " block " << blk << " head " << h
                                            << " part " << part << " dim " << i;
          }
        }
      }
    }
  }
}

class WriteKvTest : public CudaTest, public ::testing::WithParamInterface<int> {};

// Appends (prefill chunks) and overwrites of the last 32 tokens (rectification) in one launch.
TEST_P(WriteKvTest, EqualsWriteTokenKvThenRecomputeSummary) {
  const int hkv = 2, d = GetParam();
  const std::vector<int32_t> lens = {1, 17, 4097, 200};
  // Sequence s: tokens [first, first + n) are (re)written; num_keys afterwards.
  const std::vector<int32_t> first = {0, 17 - 15, 4097 - 32, 150};
  const std::vector<int32_t> count = {1, 15, 32, 50};
  std::vector<int32_t> written = {0, 17, 4097, 150};  // existing tokens before the write
  TestCache cache;
  BuildCache(cache, hkv, d, lens, 9, SmallInts(-5, 5), &written);
  std::vector<int32_t> offsets{0};
  for (int32_t n : count) offsets.push_back(offsets.back() + n);
  std::mt19937 rng(10);
  std::uniform_int_distribution<int> u(-6, 6);
  std::vector<float> k(size_t(offsets.back()) * hkv * d), v(k.size());
  for (auto& x : k) x = float(u(rng));
  for (auto& x : v) x = float(u(rng));
  for (size_t s = 0; s < lens.size(); ++s) {
    for (int32_t t = 0; t < count[s]; ++t) {
      const int32_t pos = first[s] + t;
      const size_t src = size_t(offsets[s] + t) * hkv * d;
      WriteTokenKv(cache.cpu, cache.table(s)[pos / kPageTokens], pos % kPageTokens, k.data() + src,
                   v.data() + src);
    }
    for (int32_t blk = first[s] / kPageTokens; blk <= (first[s] + count[s] - 1) / kPageTokens;
         ++blk) {
      RecomputeSummary(cache.cpu, cache.table(s)[blk], std::min(16, lens[s] - blk * kPageTokens));
    }
  }
  DeviceBuffer<uint16_t> dk(ToBf16(k)), dv(ToBf16(v));
  DeviceBuffer<int32_t> doff(offsets), dfirst(first);
  WriteKvParams p;
  p.kv = cache.gpu();
  p.k = testing::AsBf16(dk.get());
  p.v = testing::AsBf16(dv.get());
  p.num_seqs = int(lens.size());
  p.token_offsets = doff.get();
  p.first_pos = dfirst.get();
  p.num_keys = cache.dlens.get();
  p.page_tables = cache.dtables.get();
  p.page_table_stride = cache.page_table_stride;
  p.max_tokens = 50;
  ASSERT_TRUE(WriteKvCuda(p, nullptr).ok());
  ExpectCacheEqualsTwin(cache, lens);
}

// table_index: two entries (separated runs, one of them spanning a page the other touches) of
// sequence 0 share its page table row, next to an entry of sequence 1 with its own row.
TEST_P(WriteKvTest, EntriesSharingATableRow) {
  const int hkv = 2, d = GetParam();
  const std::vector<int32_t> lens = {300, 40};
  const std::vector<int32_t> entry_seq = {0, 1, 0};
  const std::vector<int32_t> first = {20, 0, 45};  // entries 0 and 2 both touch block 2
  const std::vector<int32_t> count = {20, 40, 210};
  std::vector<int32_t> written = {300, 0};  // sequence 0 is overwritten, sequence 1 appended
  TestCache cache;
  BuildCache(cache, hkv, d, lens, 19, SmallInts(-5, 5), &written);
  std::vector<int32_t> offsets{0}, entry_keys;
  for (size_t e = 0; e < count.size(); ++e) {
    offsets.push_back(offsets.back() + count[e]);
    entry_keys.push_back(lens[entry_seq[e]]);
  }
  std::mt19937 rng(20);
  std::uniform_int_distribution<int> u(-6, 6);
  std::vector<float> k(size_t(offsets.back()) * hkv * d), v(k.size());
  for (auto& x : k) x = float(u(rng));
  for (auto& x : v) x = float(u(rng));
  for (size_t e = 0; e < count.size(); ++e) {
    const int32_t s = entry_seq[e];
    for (int32_t t = 0; t < count[e]; ++t) {
      const int32_t pos = first[e] + t;
      const size_t src = size_t(offsets[e] + t) * hkv * d;
      WriteTokenKv(cache.cpu, cache.table(s)[pos / kPageTokens], pos % kPageTokens, k.data() + src,
                   v.data() + src);
    }
  }
  for (size_t e = 0; e < count.size(); ++e) {  // after all writes: entries share block 2
    const int32_t s = entry_seq[e];
    for (int32_t blk = first[e] / kPageTokens; blk <= (first[e] + count[e] - 1) / kPageTokens;
         ++blk) {
      RecomputeSummary(cache.cpu, cache.table(s)[blk], std::min(16, lens[s] - blk * kPageTokens));
    }
  }
  DeviceBuffer<uint16_t> dk(ToBf16(k)), dv(ToBf16(v));
  DeviceBuffer<int32_t> doff(offsets), dfirst(first), dkeys(entry_keys), dindex(entry_seq);
  WriteKvParams p;
  p.kv = cache.gpu();
  p.k = testing::AsBf16(dk.get());
  p.v = testing::AsBf16(dv.get());
  p.num_seqs = int(count.size());
  p.token_offsets = doff.get();
  p.first_pos = dfirst.get();
  p.num_keys = dkeys.get();
  p.page_tables = cache.dtables.get();
  p.page_table_stride = cache.page_table_stride;
  p.max_tokens = 210;
  p.table_index = dindex.get();
  ASSERT_TRUE(WriteKvCuda(p, nullptr).ok());
  ExpectCacheEqualsTwin(cache, lens);
}

INSTANTIATE_TEST_SUITE_P(HeadDims, WriteKvTest, ::testing::Values(64, 128));

// Global blocks i < ceil(num_keys / 16) with i % sp_size == sp_rank.
int32_t LocalBlocks(int32_t num_keys, int rank, int size) {
  const int32_t m = (num_keys + kPageTokens - 1) / kPageTokens;
  return m > rank ? (m - rank + size - 1) / size : 0;
}

// Rank `rank`'s local page tables: row b lists table(b)[j * size + rank], j < local blocks.
std::vector<int32_t> LocalTables(const TestCache& cache, int rank, int size) {
  std::vector<int32_t> out(cache.page_tables.size(), -1);
  for (size_t b = 0; b < cache.lens.size(); ++b) {
    for (int32_t j = 0; j < LocalBlocks(cache.lens[b], rank, size); ++j) {
      out[b * cache.page_table_stride + j] = cache.table(b)[j * size + rank];
    }
  }
  return out;
}

// ScoreBlocksCuda over every rank of an SP group: scores [batch][hkv][stride].
std::vector<float> GpuScores(const TestCache& cache, const DeviceBuffer<uint16_t>& dq,
                             int num_heads, int rank, int size, int* stride) {
  const int batch = int(cache.lens.size());
  *stride = LocalBlocks(cache.max_len(), rank, size) + 3;  // + 3: entries past must stay unset
  DeviceBuffer<int32_t> dtables(LocalTables(cache, rank, size));
  DeviceBuffer<float> dscores(size_t(batch) * cache.hkv * *stride);
  dscores.Fill(0xff);
  ScoreBlocksParams p;
  p.kv = cache.gpu();
  p.q = testing::AsBf16(dq.get());
  p.batch = batch;
  p.num_heads = num_heads;
  p.num_keys = cache.dlens.get();
  p.page_tables = dtables.get();
  p.page_table_stride = cache.page_table_stride;
  p.max_num_keys = cache.max_len();
  p.sp_rank = rank;
  p.sp_size = size;
  p.scores = dscores.get();
  p.scores_stride = *stride;
  EXPECT_TRUE(ScoreBlocksCuda(p, nullptr).ok());
  return dscores.Download();
}

bool SameBits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

struct ScoreCase {
  std::vector<int32_t> lens;
  int d;
  int group;
  PageOrder order = PageOrder::kShuffled;
};

std::string ScoreName(const ::testing::TestParamInfo<ScoreCase>& info) {
  return "d" + std::to_string(info.param.d) + "_g" + std::to_string(info.param.group) +
         OrderSuffix(info.param.order);
}

class ScoreBlocksTest : public CudaTest, public ::testing::WithParamInterface<ScoreCase> {};

// Small-integer keys and queries: exact scores, so every rank's GPU scores equal the CPU
// ScoreBlocks scores of the global blocks it holds, bit for bit (+inf for the current block).
TEST_P(ScoreBlocksTest, EqualsCpuScoresOfEveryRank) {
  const ScoreCase& tc = GetParam();
  const int hkv = 2, g = tc.group, d = tc.d, batch = int(tc.lens.size());
  TestCache cache;
  BuildCache(cache, hkv, d, tc.lens, 15, SmallInts(-2, 2), nullptr, 1, tc.order);
  std::mt19937 rng(16);
  std::vector<float> q, pooled;
  IntegerQueries(batch, hkv, g, d, rng, &q, &pooled);
  std::vector<std::vector<float>> want(batch);  // [hkv][M] each
  for (int b = 0; b < batch; ++b) {
    const int32_t m = (tc.lens[b] + kPageTokens - 1) / kPageTokens;
    want[b].resize(size_t(hkv) * m);
    ScoreBlocks(cache.cpu, pooled.data() + size_t(b) * hkv * d, cache.table(b), tc.lens[b],
                want[b].data());
  }
  DeviceBuffer<uint16_t> dq(ToBf16(q));
  for (int size : {1, 2, 3}) {
    for (int rank = 0; rank < size; ++rank) {
      int stride = 0;
      const std::vector<float> got = GpuScores(cache, dq, hkv * g, rank, size, &stride);
      for (int b = 0; b < batch; ++b) {
        const int32_t m = (tc.lens[b] + kPageTokens - 1) / kPageTokens;
        const int32_t local = LocalBlocks(tc.lens[b], rank, size);
        for (int h = 0; h < hkv; ++h) {
          const float* row = got.data() + (size_t(b) * hkv + h) * stride;
          auto where = [&](int32_t j) {
            return "sp " + std::to_string(rank) + "/" + std::to_string(size) + " seq " +
                   std::to_string(b) + " (len " + std::to_string(tc.lens[b]) + ") head " +
                   std::to_string(h) + " local block " + std::to_string(j);
          };
          for (int32_t j = 0; j < stride; ++j) {
            if (j >= local) {  // not written: still the 0xff fill
              ASSERT_TRUE(std::isnan(row[j])) << where(j) << " written past the local blocks";
              continue;
            }
            const float w = want[b][size_t(h) * m + j * size + rank];
            ASSERT_TRUE(SameBits(row[j], w)) << where(j) << ": got " << row[j] << " want " << w;
          }
        }
      }
    }
  }
}

std::vector<ScoreCase> ScoreCases() {
  std::vector<ScoreCase> cases;
  for (int d : {64, 128}) {
    for (int g : {3, 6, 7}) cases.push_back({{1, 15, 16, 17, 4097, 131090, 300}, d, g});
  }
  return WithBothPageOrders(std::move(cases));
}

INSTANTIATE_TEST_SUITE_P(Shapes, ScoreBlocksTest, ::testing::ValuesIn(ScoreCases()), ScoreName);

// Random (non-integer) bf16 data: the host top-n of the sp_size 1 scores by (score desc, block
// asc) is exactly what SelectBlocksCuda selects, on its latency path (<= 8 rows) and its wide
// path (> 8 rows); and every rank of 2 and 3 gives the sp_size 1 scores of its blocks, bit for
// bit (N ranks equal one rank). Both page orders (the selection's general and fast paths).
class ScoreBlocksCudaTest : public CudaTest {};

TEST_F(ScoreBlocksCudaTest, TopOfScoresIsTheFusedSelection) {
  const int hkv = 2;
  struct Shape {
    std::vector<int32_t> lens;
    int d, g;
  };
  const std::vector<Shape> shapes = {
      {{131090, 4097, 17}, 128, 7},                    // 6 rows: SelectKernel
      {{1, 17, 4097, 33000, 70001, 262144}, 64, 6},    // 12 rows: SelectWideKernel
      {{300001, 16, 5000, 20000, 161 * 16}, 128, 3}};  // 10 rows, keys past 16384 blocks
  for (PageOrder order : {PageOrder::kShuffled, PageOrder::kGrouped}) {
    for (const Shape& sh : shapes) {
      SCOPED_TRACE(std::string("pages ") + testing::PageOrderName(order) + ", " +
                   std::to_string(sh.lens.size()) + " sequences");
      const int batch = int(sh.lens.size()), hq = hkv * sh.g;
      TestCache cache;
      BuildCache(
          cache, hkv, sh.d, sh.lens, 17,
          [nd = std::normal_distribution<float>()](std::mt19937& rng) mutable { return nd(rng); },
          nullptr, 1, order);
      const std::vector<float> q = testing::RandomBf16Values(size_t(batch) * hq * sh.d, 18);
      DeviceBuffer<uint16_t> dq(ToBf16(q));
      int stride = 0;
      const std::vector<float> scores = GpuScores(cache, dq, hq, 0, 1, &stride);

      SelectBlocksParams p;
      p.kv = cache.gpu();
      p.q = testing::AsBf16(dq.get());
      p.batch = batch;
      p.num_heads = hq;
      p.num_keys = cache.dlens.get();
      p.page_tables = cache.dtables.get();
      p.page_table_stride = cache.page_table_stride;
      p.max_num_keys = cache.max_len();
      p.ratio = 0.1f;
      p.min_blocks = 16;
      p.blocks_stride =
          NumSelectedBlocksCuda((p.max_num_keys + kPageTokens - 1) / kPageTokens, p.ratio, 16);
      DeviceBuffer<int32_t> dblocks(size_t(batch) * hkv * p.blocks_stride), dnum(batch);
      p.blocks = dblocks.get();
      p.num_blocks = dnum.get();
      DeviceBuffer<char> ws(SelectBlocksWorkspaceBytes(p));
      ws.Fill(0);
      p.workspace = ws.get();
      p.workspace_bytes = ws.size();
      ASSERT_TRUE(SelectBlocksCuda(p, nullptr).ok());
      const std::vector<int32_t> got = dblocks.Download(), got_n = dnum.Download();
      for (int b = 0; b < batch; ++b) {
        const int32_t m = (sh.lens[b] + kPageTokens - 1) / kPageTokens;
        const int32_t n = NumSelectedBlocks(m, p.ratio, 16);
        ASSERT_EQ(got_n[b], n) << "sequence " << b;
        for (int h = 0; h < hkv; ++h) {
          const float* row = scores.data() + (size_t(b) * hkv + h) * stride;
          ASSERT_EQ(row[m - 1], std::numeric_limits<float>::infinity());
          std::vector<int32_t> ids(m);
          std::iota(ids.begin(), ids.end(), 0);
          std::stable_sort(ids.begin(), ids.end(),
                           [&](int32_t x, int32_t y) { return row[x] > row[y]; });
          ids.resize(n);
          std::sort(ids.begin(), ids.end());
          const std::vector<int32_t> sel(got.begin() + (size_t(b) * hkv + h) * p.blocks_stride,
                                         got.begin() + (size_t(b) * hkv + h) * p.blocks_stride + n);
          ASSERT_EQ(sel, ids) << "sequence " << b << " (len " << sh.lens[b] << ") head " << h;
        }
      }
      for (int size : {2, 3}) {
        for (int rank = 0; rank < size; ++rank) {
          int lstride = 0;
          const std::vector<float> local = GpuScores(cache, dq, hq, rank, size, &lstride);
          for (int b = 0; b < batch; ++b) {
            for (int h = 0; h < hkv; ++h) {
              for (int32_t j = 0; j < LocalBlocks(sh.lens[b], rank, size); ++j) {
                ASSERT_TRUE(SameBits(local[(size_t(b) * hkv + h) * lstride + j],
                                     scores[(size_t(b) * hkv + h) * stride + j * size + rank]))
                    << "sp " << rank << "/" << size << " sequence " << b << " head " << h
                    << " local block " << j;
              }
            }
          }
        }
      }
    }
  }
}

TEST_F(ScoreBlocksCudaTest, RejectsBadArguments) {
  TestCache cache;
  BuildCache(cache, 2, 64, {40}, 1, SmallInts(-1, 1));
  DeviceBuffer<uint16_t> dq(size_t(2) * 64);
  DeviceBuffer<float> dscores(8);
  ScoreBlocksParams p;
  p.kv = cache.gpu();
  p.q = testing::AsBf16(dq.get());
  p.batch = 1;
  p.num_heads = 2;
  p.num_keys = cache.dlens.get();
  p.page_tables = cache.dtables.get();
  p.page_table_stride = cache.page_table_stride;
  p.max_num_keys = 40;
  p.scores = dscores.get();
  p.scores_stride = 2;  // rank 0 of 2 holds blocks 0 and 2
  p.sp_size = 2;
  EXPECT_TRUE(ScoreBlocksCuda(p, nullptr).ok());
  p.scores_stride = 1;
  EXPECT_EQ(ScoreBlocksCuda(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p.scores_stride = 2;
  p.sp_rank = 2;
  EXPECT_EQ(ScoreBlocksCuda(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p.sp_rank = 0;
  p.num_heads = 3;
  EXPECT_EQ(ScoreBlocksCuda(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace resa::cuda
