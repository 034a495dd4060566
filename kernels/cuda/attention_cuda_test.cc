// CUDA attention kernels vs their CPU twins (kernels/cpu/attention.h) on the same bf16 values.
#include "kernels/cuda/attention_cuda.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/selection.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/cuda_test_util.h"
#include "kernels/testing/tolerance.h"

namespace resa::cuda {
namespace {

using resa::testing::AllClose;
using resa::testing::kBF16;
using resa::testing::kF32;
using testing::BuildCache;
using testing::CudaTest;
using testing::DeviceBuffer;
using testing::RandomBf16Values;
using testing::TestCache;

constexpr float kInf = std::numeric_limits<float>::infinity();

auto Normal() {
  return [nd = std::normal_distribution<float>(0.0f, 1.0f)](std::mt19937& rng) mutable {
    return nd(rng);
  };
}

struct DecodeCase {
  std::string name;
  std::vector<int32_t> lens;
  int d;
  int group;
  bool sparse;
  int hkv = 2;
};

std::string CaseName(const ::testing::TestParamInfo<DecodeCase>& info) {
  const DecodeCase& c = info.param;
  return c.name + "_d" + std::to_string(c.d) + "_g" + std::to_string(c.group) +
         (c.sparse ? "_sparse" : "_dense") + (c.hkv != 2 ? "_kv" + std::to_string(c.hkv) : "");
}

std::vector<DecodeCase> DecodeCases() {
  std::vector<DecodeCase> cases;
  std::mt19937 rng(7);
  std::vector<int32_t> ragged8;
  for (int i = 0; i < 8; ++i) ragged8.push_back(1 + int32_t(rng() % 9000));
  const std::vector<std::pair<std::string, std::vector<int32_t>>> sets = {
      {"short", {1, 15, 16, 17, 4097}}, {"long", {131073}}, {"ragged8", ragged8}};
  for (const auto& [name, lens] : sets) {
    for (int d : {64, 128}) {
      for (int g : {3, 6, 7}) {
        for (bool sparse : {false, true}) cases.push_back({name, lens, d, g, sparse});
      }
    }
  }
  // Split/cluster shapes: one split (cluster of 1), three splits (cluster of 3).
  for (bool sparse : {false, true}) {
    cases.push_back({"tiny", {1, 15, 16, 17, 100}, 128, 7, sparse});
    cases.push_back({"three_splits", {700, 5}, 64, 6, sparse});
  }
  cases.push_back({"wide_group", {17, 4097}, 128, 12, false});  // two head chunks per KV head
  cases.push_back({"wide_group", {17, 4097}, 128, 12, true});
  // 48 rows of (sequence, head chunk): 5 splits a row, so the 45000-token row has 563 pages a
  // split: more than one round of page ids staged in shared memory.
  for (bool sparse : {false, true}) {
    cases.push_back(
        {"id_rounds", {45000, 1, 17, 300, 4097, 16, 15, 2000, 5, 33, 100, 7}, 128, 12, sparse});
  }
  // One (sequence, KV head) row, as on a tensor-parallel rank of the 1.5B shape: the dense row
  // takes a whole wave of splits, about 30 clusters, so the last leader folds its partials in
  // four rounds of eight.
  for (bool sparse : {false, true}) cases.push_back({"one_kv_head", {131073}, 128, 6, sparse, 1});
  return cases;
}

// Restores DecodeSparseClusters() on scope exit, whichever way a test leaves.
class SparseClustersRestorer {
 public:
  SparseClustersRestorer() : saved_(DecodeSparseClusters()) {}
  ~SparseClustersRestorer() { SetDecodeSparseClusters(saved_); }
  SparseClustersRestorer(const SparseClustersRestorer&) = delete;
  SparseClustersRestorer& operator=(const SparseClustersRestorer&) = delete;

 private:
  bool saved_;
};

class DecodeAttentionTest : public CudaTest, public ::testing::WithParamInterface<DecodeCase> {};

TEST_P(DecodeAttentionTest, MatchesCpuTwin) {
  const DecodeCase& tc = GetParam();
  const int hkv = tc.hkv, hq = hkv * tc.group, d = tc.d;
  const int batch = int(tc.lens.size());
  TestCache cache;
  BuildCache(cache, hkv, d, tc.lens, 11, Normal());
  const std::vector<float> q = RandomBf16Values(size_t(batch) * hq * d, 12);

  // Sparse rows: ~10% of the blocks (at least 16) in shuffled order, always the last one; the
  // second sequence of a batch selects nothing and must come back as O = 0, lse = -inf.
  std::vector<int32_t> num_blocks(batch, 0), blocks;
  int stride = 1;
  if (tc.sparse) {
    std::mt19937 rng(13);
    for (int b = 0; b < batch; ++b) {
      const int32_t m = (tc.lens[b] + kPageTokens - 1) / kPageTokens;
      num_blocks[b] = (batch > 1 && b == 1) ? 0 : NumSelectedBlocks(m, 0.1f, 16);
      stride = std::max(stride, num_blocks[b]);
    }
    blocks.assign(size_t(batch) * hkv * stride, -1);
    for (int b = 0; b < batch; ++b) {
      const int32_t m = (tc.lens[b] + kPageTokens - 1) / kPageTokens;
      for (int h = 0; h < hkv; ++h) {
        if (num_blocks[b] == 0) continue;
        std::vector<int32_t> ids(m - 1);
        std::iota(ids.begin(), ids.end(), 0);
        std::shuffle(ids.begin(), ids.end(), rng);
        ids.resize(num_blocks[b] - 1);
        ids.push_back(m - 1);  // the current block
        std::shuffle(ids.begin(), ids.end(), rng);
        for (int i = 0; i < num_blocks[b]; ++i) blocks[(size_t(b) * hkv + h) * stride + i] = ids[i];
      }
    }
  }

  // CPU twin.
  std::vector<AttentionRow> rows(batch);
  for (int b = 0; b < batch; ++b) {
    rows[b].page_table = cache.table(b);
    rows[b].num_keys = tc.lens[b];
    if (tc.sparse) {
      rows[b].sparse = true;
      rows[b].blocks = blocks.data() + size_t(b) * hkv * stride;
      rows[b].num_blocks = num_blocks[b];
      rows[b].blocks_stride = stride;
    }
  }
  const AttentionParams ap{hq, 1.0f / std::sqrt(float(d))};
  std::vector<float> want(size_t(batch) * hq * d), want_lse(size_t(batch) * hq);
  PagedAttention(cache.cpu, ap, q.data(), rows, want.data(), want_lse.data());

  // GPU.
  DeviceBuffer<uint16_t> dq(testing::ToBf16(q));
  DeviceBuffer<float> dout(want.size()), dlse(want_lse.size());
  dout.Fill(0xff);  // NaN: every output must be written
  dlse.Fill(0xff);
  DeviceBuffer<int32_t> dblocks(tc.sparse ? blocks : std::vector<int32_t>{0});
  DeviceBuffer<int32_t> dnum(num_blocks);
  DecodeAttentionParams p;
  p.kv = cache.gpu();
  p.q = testing::AsBf16(dq.get());
  p.out = dout.get();
  p.lse_ln = dlse.get();
  p.batch = batch;
  p.num_heads = hq;
  p.scale = ap.scale;
  p.num_keys = cache.dlens.get();
  p.page_tables = cache.dtables.get();
  p.page_table_stride = cache.page_table_stride;
  p.max_num_keys = cache.max_len();
  if (tc.sparse) {
    p.blocks = dblocks.get();
    p.num_blocks = dnum.get();
    p.blocks_stride = stride;
    p.max_num_blocks = *std::max_element(num_blocks.begin(), num_blocks.end());
  }
  // Sparse rows both ways of merging their splits (DecodeSparseClusters): the merge kernel (the
  // default) and 8-CTA clusters.
  const SparseClustersRestorer restore;
  for (const bool clusters :
       tc.sparse ? std::vector<bool>{false, true} : std::vector<bool>{DecodeSparseClusters()}) {
    SetDecodeSparseClusters(clusters);
    DeviceBuffer<char> ws(DecodeAttentionWorkspaceBytes(p));
    ws.Fill(0);
    p.workspace = ws.get();
    p.workspace_bytes = ws.size();
    // Twice: the second launch checks that the split counters were left at zero, stages the
    // query heads after the PDL wait (q_from_previous_kernel) and loads each warp's first page
    // before it (pages_before_wait), which must not change a bit.
    std::vector<float> first, first_lse;
    for (int rep = 0; rep < 2; ++rep) {
      p.q_from_previous_kernel = rep == 1;
      p.pages_before_wait = rep == 1;
      dout.Fill(0xff);
      dlse.Fill(0xff);
      ASSERT_TRUE(DecodeAttentionCuda(p, nullptr).ok());
      const std::vector<float> got = dout.Download(), got_lse = dlse.Download();
      EXPECT_TRUE(AllClose(got.data(), want.data(), want.size(), kBF16))
          << "rep " << rep << " clusters " << clusters;
      EXPECT_TRUE(AllClose(got_lse.data(), want_lse.data(), want_lse.size(), kBF16))
          << "rep " << rep << " clusters " << clusters;
      if (rep == 0) {
        first = got, first_lse = got_lse;
      } else {
        EXPECT_EQ(std::memcmp(got.data(), first.data(), got.size() * 4), 0);
        EXPECT_EQ(std::memcmp(got_lse.data(), first_lse.data(), got_lse.size() * 4), 0);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, DecodeAttentionTest, ::testing::ValuesIn(DecodeCases()), CaseName);

// How a chunk's rows get their key counts.
enum class RowKeys {
  kCausal,  // first_num_keys: row r sees first + r keys
  kSpView,  // row_num_keys: SP rank c % sp_size's packed local view of the global causal rows
  kJumpy,   // row_num_keys: random runs that stand still, then jump by up to 40; starts at 0
};

struct ChunkCase {
  std::string name;
  std::vector<std::pair<int32_t, int32_t>> chunks;  // (rows, first_num_keys)
  int d;
  int group;
  int num_splits;  // 0: automatic
  RowKeys row_keys = RowKeys::kCausal;
  int sp_size = 1;  // kSpView
};

// Keys among global positions [0, n) that SP rank r of S holds (block b lives on rank b % S).
int32_t LocalKeys(int32_t n, int r, int S) {
  const int32_t full = n / kPageTokens, rem = n % kPageTokens;
  const int32_t blocks = full > r ? (full - r + S - 1) / S : 0;
  return blocks * kPageTokens + (full % S == r ? rem : 0);
}

// Per-row key counts of every chunk, [total_rows]: what row_num_keys holds (or the causal ones).
std::vector<int32_t> RowKeyCounts(const ChunkCase& tc) {
  std::vector<int32_t> out;
  std::mt19937 rng(23);
  for (size_t c = 0; c < tc.chunks.size(); ++c) {
    const auto [rows, first] = tc.chunks[c];
    int32_t jumpy = 0;
    for (int32_t i = 0; i < rows; ++i) {
      switch (tc.row_keys) {
        case RowKeys::kCausal:
          out.push_back(first + i);
          break;
        case RowKeys::kSpView:
          out.push_back(LocalKeys(first + i, int(c) % tc.sp_size, tc.sp_size));
          break;
        case RowKeys::kJumpy:
          if (i > 0 && rng() % 5 < 2) jumpy += 1 + int32_t(rng() % 40);
          out.push_back(jumpy);
          break;
      }
    }
  }
  return out;
}

std::string ChunkName(const ::testing::TestParamInfo<ChunkCase>& info) {
  const ChunkCase& c = info.param;
  const std::string keys = c.row_keys == RowKeys::kSpView  ? "_sp" + std::to_string(c.sp_size)
                           : c.row_keys == RowKeys::kJumpy ? "_jumpy"
                                                           : "";
  return c.name + "_d" + std::to_string(c.d) + "_g" + std::to_string(c.group) + "_s" +
         std::to_string(c.num_splits) + keys;
}

std::vector<ChunkCase> ChunkCases() {
  std::vector<ChunkCase> cases;
  const std::vector<std::pair<std::string, std::vector<std::pair<int32_t, int32_t>>>> sets = {
      {"ragged", {{1, 1}, {15, 2}, {16, 17}, {17, 4097}, {32, 4066}, {200, 300}}},
      {"rectify_long", {{32, 131073 - 31}, {1, 131072}}},
      {"prefill", {{1000, 1}, {17, 1}}}};
  for (const auto& [name, chunks] : sets) {
    for (int d : {64, 128}) {
      for (int g : {3, 6, 7}) cases.push_back({name, chunks, d, g, 0});
    }
  }
  // Forced splits: many more than key tiles, so most splits are empty and must merge as zero.
  cases.push_back({"empty_splits", {{5, 20}, {3, 70}}, 128, 7, 48});
  // 32-token chunks of a 6-head group: 192 rows, the wgmma kernel's three-warpgroup tile; with
  // automatic and with forced splits, and chunks shorter than one 64-key tile.
  for (int d : {64, 128}) {
    for (int splits : {0, 5}) {
      cases.push_back({"rectify32", {{32, 5000}, {32, 37}, {20, 1}, {32, 1}}, d, 6, splits});
    }
  }
  cases.push_back({"split3", {{32, 4066}}, 64, 6, 3});
  // row_num_keys, SP local views (chunk c on rank c % sp_size): limits stand still on rows in
  // other ranks' blocks, then climb; chunk 1 of sp3 ({16, 1} on rank 1) sees no key at all.
  const std::vector<std::pair<int32_t, int32_t>> sp_chunks = {
      {40, 1}, {16, 1}, {200, 100}, {33, 4000}, {700, 1}};
  for (int d : {64, 128}) {
    for (int g : {3, 6, 7}) {
      cases.push_back({"local_view", sp_chunks, d, g, 0, RowKeys::kSpView, g == 6 ? 2 : 3});
    }
  }
  cases.push_back({"local_view", sp_chunks, 64, 6, 1, RowKeys::kSpView, 3});
  cases.push_back({"local_view", sp_chunks, 128, 7, 5, RowKeys::kSpView, 3});
  cases.push_back(
      {"local_view_long", {{32, 131073 - 31}, {5, 131072}}, 128, 7, 0, RowKeys::kSpView, 2});
  // 32-token chunks of a 6-head group on a local view: 192-row tiles.
  cases.push_back(
      {"local_view_rect", {{32, 4000}, {32, 1}, {20, 300}}, 128, 6, 0, RowKeys::kSpView, 2});
  cases.push_back({"jumps", {{64, 0}, {300, 0}, {7, 0}}, 64, 7, 0, RowKeys::kJumpy});
  cases.push_back({"jumps", {{64, 0}, {300, 0}, {7, 0}}, 128, 3, 1, RowKeys::kJumpy});
  cases.push_back({"jumps", {{64, 0}, {300, 0}, {7, 0}}, 128, 6, 4, RowKeys::kJumpy});
  return cases;
}

class ChunkAttentionTest : public CudaTest, public ::testing::WithParamInterface<ChunkCase> {};

TEST_P(ChunkAttentionTest, MatchesCpuTwin) {
  const ChunkCase& tc = GetParam();
  const int hkv = 2, hq = hkv * tc.group, d = tc.d;
  const bool per_row = tc.row_keys != RowKeys::kCausal;
  const std::vector<int32_t> row_keys = RowKeyCounts(tc);
  std::vector<int32_t> lens, row_offsets{0}, firsts;
  int32_t max_rows = 0, max_keys = 0;
  for (const auto& [rows, first] : tc.chunks) {
    const int32_t r0 = row_offsets.back();
    lens.push_back(row_keys[r0 + rows - 1]);  // the chunk's largest limit (last row)
    firsts.push_back(first);
    row_offsets.push_back(r0 + rows);
    max_rows = std::max(max_rows, rows);
    max_keys = std::max(max_keys, lens.back());
  }
  const int32_t total_rows = row_offsets.back();
  TestCache cache;
  BuildCache(cache, hkv, d, lens, 21, Normal());
  const std::vector<float> q = RandomBf16Values(size_t(total_rows) * hq * d, 22);
  const AttentionParams ap{hq, 1.0f / std::sqrt(float(d))};
  std::vector<float> want(q.size()), want_lse(size_t(total_rows) * hq);
  if (per_row) {  // one decode row per query row, num_keys = row_num_keys[i]
    std::vector<AttentionRow> rows(total_rows);
    for (size_t c = 0; c < tc.chunks.size(); ++c) {
      for (int32_t i = row_offsets[c]; i < row_offsets[c + 1]; ++i) {
        rows[i].page_table = cache.table(c);
        rows[i].num_keys = row_keys[i];
      }
    }
    PagedAttention(cache.cpu, ap, q.data(), rows, want.data(), want_lse.data());
  } else {
    for (size_t c = 0; c < tc.chunks.size(); ++c) {
      const size_t r0 = row_offsets[c];
      PagedChunkAttention(cache.cpu, ap, q.data() + r0 * hq * d, tc.chunks[c].first, cache.table(c),
                          firsts[c], want.data() + r0 * hq * d, want_lse.data() + r0 * hq);
    }
  }

  DeviceBuffer<uint16_t> dq(testing::ToBf16(q));
  DeviceBuffer<int32_t> doffs(row_offsets), dfirst(firsts), drow_keys(row_keys);
  // Every kernel against the same reference: the wgmma ones (sm_90; the warp-specialised one
  // with K/V tiles by TMA, the pool's page count given, and by cp.async, not given: the results
  // must be the same bits) and the mma.sync one.
  std::vector<float> tma_out, tma_lse;  // the TMA run of the warp-specialised kernel
  int tma_row_tile = 0;
  for (const auto& [kernel, tma] :
       {std::pair{ChunkKernel::kWgmma, false}, std::pair{ChunkKernel::kWgmmaWs, true},
        std::pair{ChunkKernel::kWgmmaWs, false}, std::pair{ChunkKernel::kMmaSync, false}}) {
    const char* kernel_name = kernel == ChunkKernel::kWgmma ? "wgmma"
                              : kernel == ChunkKernel::kWgmmaWs
                                  ? (tma ? "wgmma-ws (TMA)" : "wgmma-ws (cp.async)")
                                  : "mma.sync";
    SCOPED_TRACE(kernel_name);
    if (kernel != ChunkKernel::kMmaSync && ComputeCapabilityMajor() != 9) {
      std::printf("%s not run: the device is not sm_90\n", kernel_name);
      continue;
    }
    DeviceBuffer<float> dout(want.size()), dlse(want_lse.size());
    dout.Fill(0xff);
    dlse.Fill(0xff);
    ChunkAttentionParams p;
    p.kv = cache.gpu();
    ASSERT_GT(p.kv.num_pages, 0);
    if (!tma) p.kv.num_pages = 0;
    p.q = testing::AsBf16(dq.get());
    p.out = dout.get();
    p.lse_ln = dlse.get();
    p.num_heads = hq;
    p.scale = ap.scale;
    p.num_chunks = int(tc.chunks.size());
    p.row_offsets = doffs.get();
    p.first_num_keys = per_row ? nullptr : dfirst.get();
    p.row_num_keys = per_row ? drow_keys.get() : nullptr;
    p.page_tables = cache.dtables.get();
    p.page_table_stride = cache.page_table_stride;
    p.total_rows = total_rows;
    p.max_rows = max_rows;
    p.max_num_keys = max_keys;
    p.num_splits = tc.num_splits;
    p.kernel = kernel;
    DeviceBuffer<char> ws(std::max<size_t>(1, ChunkAttentionWorkspaceBytes(p)));
    p.workspace = ws.get();
    p.workspace_bytes = ws.size();
    ASSERT_TRUE(ChunkAttentionCuda(p, nullptr).ok());
    const std::vector<float> got = dout.Download(), got_lse = dlse.Download();
    EXPECT_TRUE(AllClose(got.data(), want.data(), want.size(), kBF16));
    if (kernel == ChunkKernel::kWgmmaWs) {
      if (tma) {
        tma_out = got;
        tma_lse = got_lse;
        tma_row_tile = ChunkAttentionRowTile(p);
      } else if (tma_row_tile == ChunkAttentionRowTile(p)) {
        // Same tiles, same arithmetic: the copy engine must not change a bit. (With TMA a
        // chunk of 192-row tiles runs three consumer warpgroups, without it two.)
        ASSERT_EQ(tma_out.size(), got.size());
        EXPECT_EQ(std::memcmp(tma_out.data(), got.data(), got.size() * sizeof(float)), 0);
        EXPECT_EQ(std::memcmp(tma_lse.data(), got_lse.data(), got_lse.size() * sizeof(float)), 0);
      }
    }
    EXPECT_TRUE(AllClose(got_lse.data(), want_lse.data(), want_lse.size(), kBF16));
    // Rows without keys: exactly O = 0, lse = -inf.
    int32_t empty_rows = 0;
    for (int32_t i = 0; i < total_rows; ++i) {
      if (row_keys[i] != 0) continue;
      ++empty_rows;
      for (size_t j = size_t(i) * hq; j < size_t(i + 1) * hq; ++j) {
        ASSERT_EQ(got_lse[j], -kInf) << "row " << i;
        for (int e = 0; e < d; ++e) ASSERT_EQ(got[j * d + e], 0.0f) << "row " << i;
      }
    }
    double worst_o = 0.0, worst_lse = 0.0;
    for (size_t i = 0; i < got.size(); ++i) {
      worst_o = std::max(worst_o, double(std::fabs(got[i] - want[i])));
    }
    for (size_t i = 0; i < got_lse.size(); ++i) {
      if (!std::isinf(want_lse[i])) {
        worst_lse = std::max(worst_lse, double(std::fabs(got_lse[i] - want_lse[i])));
      }
    }
    std::printf("%s: worst |err| O %.3g lse %.3g, %d rows without keys\n", kernel_name, worst_o,
                worst_lse, empty_rows);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, ChunkAttentionTest, ::testing::ValuesIn(ChunkCases()), ChunkName);

class MergeCudaTest : public CudaTest {};

TEST_F(MergeCudaTest, MatchesCpuTwinIncludingEmptyPartials) {
  const int n = 1000, d = 128;
  std::vector<float> oa = RandomBf16Values(size_t(n) * d, 31),
                     ob = RandomBf16Values(size_t(n) * d, 32);
  std::vector<float> la = RandomBf16Values(n, 33, 5.0f), lb = RandomBf16Values(n, 34, 5.0f);
  for (int i = 0; i < n; i += 7) la[i] = -kInf;
  for (int i = 0; i < n; i += 5) lb[i] = -kInf;
  for (int i = 0; i < n; i += 35) {  // both empty: O must be zero
    std::fill(oa.begin() + size_t(i) * d, oa.begin() + size_t(i + 1) * d, 0.0f);
  }
  DeviceBuffer<float> doa(oa), dla(la), dob(ob), dlb(lb);
  std::vector<float> want = oa, want_lse = la;
  MergeAttentionStates(want.data(), want_lse.data(), ob.data(), lb.data(), n, d);
  ASSERT_TRUE(
      MergeAttentionStatesCuda(doa.get(), dla.get(), dob.get(), dlb.get(), n, d, nullptr).ok());
  const std::vector<float> got = doa.Download(), got_lse = dla.Download();
  EXPECT_TRUE(AllClose(got.data(), want.data(), want.size(), kF32));
  EXPECT_TRUE(AllClose(got_lse.data(), want_lse.data(), want_lse.size(), kF32));
}

// Invariant: dense decode == LSE merge of sparse decodes over two disjoint halves of the blocks.
TEST_F(MergeCudaTest, MergedHalvesEqualDense) {
  const int hkv = 2, g = 7, hq = hkv * g, d = 128;
  const std::vector<int32_t> lens = {4097, 20000};
  TestCache cache;
  BuildCache(cache, hkv, d, lens, 41, Normal());
  const std::vector<float> q = RandomBf16Values(size_t(2) * hq * d, 42);
  DeviceBuffer<uint16_t> dq(testing::ToBf16(q));
  const int32_t mmax = (20000 + 15) / 16;
  const int stride = (mmax + 1) / 2 + 1;
  std::vector<int32_t> even(size_t(2) * hkv * stride), odd(even.size()), ne(2), no(2);
  for (int b = 0; b < 2; ++b) {
    const int32_t m = (lens[b] + 15) / 16;
    ne[b] = (m + 1) / 2, no[b] = m / 2;
    for (int h = 0; h < hkv; ++h) {
      for (int32_t i = 0; i < m; ++i) {
        (i % 2 == 0 ? even : odd)[(size_t(b) * hkv + h) * stride + i / 2] = i;
      }
    }
  }
  DeviceBuffer<int32_t> deven(even), dodd(odd), dne(ne), dno(no);
  DeviceBuffer<float> o_dense(size_t(2) * hq * d), l_dense(2 * hq), o_a(o_dense.size()),
      l_a(2 * hq), o_b(o_dense.size()), l_b(2 * hq);
  DecodeAttentionParams p;
  p.kv = cache.gpu();
  p.q = testing::AsBf16(dq.get());
  p.batch = 2;
  p.num_heads = hq;
  p.scale = 1.0f / std::sqrt(float(d));
  p.num_keys = cache.dlens.get();
  p.page_tables = cache.dtables.get();
  p.page_table_stride = cache.page_table_stride;
  p.max_num_keys = 20000;
  p.blocks_stride = stride;
  p.max_num_blocks = stride;
  DeviceBuffer<char> ws(DecodeAttentionWorkspaceBytes(p) + DecodeAttentionWorkspaceBytes([&] {
                          DecodeAttentionParams s = p;
                          s.blocks = deven.get();
                          return s;
                        }()));
  ws.Fill(0);
  p.workspace = ws.get();
  p.workspace_bytes = ws.size();
  p.out = o_dense.get(), p.lse_ln = l_dense.get();
  ASSERT_TRUE(DecodeAttentionCuda(p, nullptr).ok());
  p.blocks = deven.get(), p.num_blocks = dne.get(), p.out = o_a.get(), p.lse_ln = l_a.get();
  ASSERT_TRUE(DecodeAttentionCuda(p, nullptr).ok());
  p.blocks = dodd.get(), p.num_blocks = dno.get(), p.out = o_b.get(), p.lse_ln = l_b.get();
  ASSERT_TRUE(DecodeAttentionCuda(p, nullptr).ok());
  ASSERT_TRUE(
      MergeAttentionStatesCuda(o_a.get(), l_a.get(), o_b.get(), l_b.get(), 2 * hq, d, nullptr)
          .ok());
  const std::vector<float> dense = o_dense.Download(), merged = o_a.Download();
  const std::vector<float> dl = l_dense.Download(), ml = l_a.Download();
  EXPECT_TRUE(AllClose(merged.data(), dense.data(), dense.size(), kBF16));
  EXPECT_TRUE(AllClose(ml.data(), dl.data(), dl.size(), kBF16));
}

TEST_F(MergeCudaTest, RejectsBadArguments) {
  DecodeAttentionParams p;
  EXPECT_EQ(DecodeAttentionCuda(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  ChunkAttentionParams c;
  EXPECT_EQ(ChunkAttentionCuda(c, nullptr).code(), absl::StatusCode::kInvalidArgument);
  // first_num_keys may be null only when row_num_keys is set.
  DeviceBuffer<float> buf(64);
  const PagedKvCuda kv{testing::AsBf16(reinterpret_cast<uint16_t*>(buf.get())),
                       testing::AsBf16(reinterpret_cast<uint16_t*>(buf.get())), nullptr, 1, 64};
  c.kv = kv;
  c.q = kv.k;
  c.out = buf.get();
  c.num_heads = 1;
  c.num_chunks = 1;
  c.row_offsets = c.page_tables = reinterpret_cast<const int32_t*>(buf.get());
  c.page_table_stride = c.total_rows = c.max_rows = c.max_num_keys = 1;
  EXPECT_EQ(ChunkAttentionCuda(c, nullptr).code(), absl::StatusCode::kInvalidArgument);
  // The scale must be positive and finite: the kernels take maxima of unscaled scores.
  c.first_num_keys = c.row_offsets;
  for (const float scale : {0.0f, -0.125f, std::numeric_limits<float>::quiet_NaN(), kInf}) {
    c.scale = scale;
    EXPECT_EQ(ChunkAttentionCuda(c, nullptr).code(), absl::StatusCode::kInvalidArgument) << scale;
  }
  // The pool's page count is >= 0 (0: not given, cp.async copies).
  c.scale = 0.125f;
  c.kv.num_pages = -1;
  EXPECT_EQ(ChunkAttentionCuda(c, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

class DecodePlacementTest : public CudaTest {};

// DecodeAttentionFitsBeside: launches without thread-block clusters (dense rows; sparse rows of
// batch 8; by default every sparse row) fit beside any number of busy SMs; a clustered one
// (sparse, batch 1, 256K, with DecodeSparseClusters) fits beside none, not beside all of them,
// and beside fewer whenever it fits beside more.
TEST_F(DecodePlacementTest, FitsBesideBusySms) {
  int sms = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
  DecodeAttentionParams p;
  p.kv.num_kv_heads = 4;
  p.kv.head_dim = 128;
  p.num_heads = 28;
  p.batch = 1;
  p.page_table_stride = 16384;
  p.max_num_keys = 262144;
  for (const int busy : {0, 1, 4, sms}) EXPECT_TRUE(DecodeAttentionFitsBeside(p, busy)) << busy;
  p.blocks = reinterpret_cast<const int32_t*>(&p);  // sizing only: never read
  p.max_num_blocks = p.blocks_stride = NumSelectedBlocks(16384, 0.1f, 16);
  const SparseClustersRestorer restore;
  SetDecodeSparseClusters(false);
  for (const int busy : {0, 1, 4, sms}) EXPECT_TRUE(DecodeAttentionFitsBeside(p, busy)) << busy;
  SetDecodeSparseClusters(true);
  EXPECT_TRUE(DecodeAttentionFitsBeside(p, 0));
  EXPECT_FALSE(DecodeAttentionFitsBeside(p, sms));
  bool fits_fewer = true;
  for (int busy = 0; busy <= sms; ++busy) {
    const bool fits = DecodeAttentionFitsBeside(p, busy);
    EXPECT_TRUE(fits_fewer || !fits) << "fits beside " << busy << " busy SMs, not fewer";
    fits_fewer = fits;
  }
  p.batch = 8;
  for (const int busy : {0, 1, 32, sms}) EXPECT_TRUE(DecodeAttentionFitsBeside(p, busy)) << busy;
}

}  // namespace
}  // namespace resa::cuda
