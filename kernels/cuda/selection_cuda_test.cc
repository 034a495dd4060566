// CUDA K/V writes, summaries and fused block selection vs the CPU twins (kernels/cpu/selection.h).
// Keys and queries are small integers, so every score is exact in fp32 and the GPU selection
// must equal TopBlocks id for id, ties (many, by construction) included.
#include "kernels/cuda/selection_cuda.h"

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
using testing::TestCache;
using testing::ToBf16;

auto SmallInts(int lo, int hi) {
  return [u = std::uniform_int_distribution<int>(lo, hi)](std::mt19937& rng) mutable {
    return float(u(rng));
  };
}

struct SelectCase {
  std::string name;
  std::vector<int32_t> lens;
  int d;
  int group;
  float ratio;
  int key_range = 2;  // keys drawn from [-key_range, key_range]; 0: every score ties
};

std::string SelectName(const ::testing::TestParamInfo<SelectCase>& info) {
  const SelectCase& c = info.param;
  return c.name + "_d" + std::to_string(c.d) + "_g" + std::to_string(c.group) + "_r" +
         std::to_string(int(c.ratio * 100));
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
  // Up to 4 sequences (8 rows) run the latency kernel, more the throughput kernel: short rows
  // on the first, rows past 16384 blocks (keys in L2) on the second.
  cases.push_back({"short_few", {1, 17, 4097}, 128, 7, 0.1f});
  cases.push_back({"wide_l2", {300001, 1, 4097, 33, 70001}, 64, 3, 0.1f, 100});
  cases.push_back({"half", {4097, 5000, 161 * 16}, 128, 6, 0.5f});
  cases.push_back({"all_tied", {4097, 20000, 17}, 64, 3, 0.1f, 0});  // order decides everything
  return cases;
}

class SelectBlocksTest : public CudaTest, public ::testing::WithParamInterface<SelectCase> {};

TEST_P(SelectBlocksTest, EqualsCpuTopBlocksExactly) {
  const SelectCase& tc = GetParam();
  const int hkv = 2, g = tc.group, hq = hkv * g, d = tc.d;
  const int batch = int(tc.lens.size());
  std::vector<int32_t> before(batch);
  for (int b = 0; b < batch; ++b) before[b] = tc.lens[b] - 1;
  TestCache cache;
  BuildCache(cache, hkv, d, tc.lens, 5, SmallInts(-tc.key_range, tc.key_range), &before);

  std::mt19937 rng(6);
  std::uniform_int_distribution<int> small(-3, 3);
  std::vector<float> knew(size_t(batch) * hkv * d), vnew(knew.size()), q(size_t(batch) * hq * d);
  std::vector<float> pooled(size_t(batch) * hkv * d);
  for (auto& x : knew) x = tc.key_range == 0 ? 0.0f : float(small(rng));
  for (auto& x : vnew) x = float(small(rng));
  // Each group's heads are pooled + deltas that sum to zero, so the mean is an exact integer.
  for (int b = 0; b < batch; ++b) {
    for (int h = 0; h < hkv; ++h) {
      for (int i = 0; i < d; ++i) {
        const float base = float(small(rng));
        pooled[(size_t(b) * hkv + h) * d + i] = base;
        for (int j = 0; j < g; ++j) {
          const float delta = j + 1 < g ? float((j % 2 == 0 ? 1 : -1) * (j / 2 + 1)) : 0.0f;
          q[((size_t(b) * hq) + h * g + j) * d + i] = base + delta;
        }
        if (g % 2 == 0) {  // deltas +1, -1, +2, -2, ..., +g/2 so far: the last one cancels it
          q[((size_t(b) * hq) + h * g + g - 1) * d + i] = base - float(g / 2);
        }
      }
    }
  }

  // CPU twin: write, score, select.
  std::vector<std::vector<int32_t>> want(batch);
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
  DeviceBuffer<char> ws(SelectBlocksWorkspaceBytes(p));
  ws.Fill(0);
  p.workspace = ws.get();
  p.workspace_bytes = ws.size();
  for (int rep = 0; rep < 2; ++rep) {  // the second run checks the counters were reset
    dblocks.Fill(0xff);
    ASSERT_TRUE(SelectBlocksCuda(p, nullptr).ok());
    const std::vector<int32_t> got = dblocks.Download(), got_n = dnum.Download();
    for (int b = 0; b < batch; ++b) {
      const int32_t n = int32_t(want[b].size() / hkv);
      ASSERT_EQ(got_n[b], n) << "sequence " << b;
      for (int h = 0; h < hkv; ++h) {
        const std::vector<int32_t> w(want[b].begin() + size_t(h) * n,
                                     want[b].begin() + size_t(h + 1) * n);
        const std::vector<int32_t> gv(got.begin() + (size_t(b) * hkv + h) * p.blocks_stride,
                                      got.begin() + (size_t(b) * hkv + h) * p.blocks_stride + n);
        ASSERT_EQ(gv, w) << "rep " << rep << " sequence " << b << " (len " << tc.lens[b]
                         << ") head " << h;
      }
    }
  }
  // The fused write left K, V and the summary exactly as WriteTokenKv did.
  const std::vector<uint16_t> gk = cache.dk.Download(), gv = cache.dv.Download(),
                              gs = cache.dsummary.Download();
  for (int b = 0; b < batch; ++b) {
    const int32_t pos = tc.lens[b] - 1, page = cache.table(b)[pos / kPageTokens];
    for (int h = 0; h < hkv; ++h) {
      const size_t kv_off = ((size_t(page) * hkv + h) * kPageTokens + pos % kPageTokens) * d;
      const size_t s_off = (size_t(page) * hkv + h) * 2 * d;
      for (int i = 0; i < d; ++i) {
        ASSERT_EQ(gk[kv_off + i], ToBf16(cache.k[kv_off + i]));
        ASSERT_EQ(gv[kv_off + i], ToBf16(cache.v[kv_off + i]));
        ASSERT_EQ(gs[s_off + i], ToBf16(cache.summary[s_off + i])) << "min, dim " << i;
        ASSERT_EQ(gs[s_off + d + i], ToBf16(cache.summary[s_off + d + i])) << "max, dim " << i;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, SelectBlocksTest, ::testing::ValuesIn(SelectCases()), SelectName);

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
  const std::vector<uint16_t> gk = cache.dk.Download(), gv = cache.dv.Download(),
                              gs = cache.dsummary.Download();
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
      for (size_t i = 0; i < size_t(hkv) * 2 * d; ++i) {
        const size_t off = size_t(page) * hkv * 2 * d + i;
        ASSERT_EQ(gs[off], ToBf16(cache.summary[off])) << "seq " << s << " block " << blk;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(HeadDims, WriteKvTest, ::testing::Values(64, 128));

}  // namespace
}  // namespace resa::cuda
