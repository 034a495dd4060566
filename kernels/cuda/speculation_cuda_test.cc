// The selection's speculative attention (SelectBlocksParams::spec) with the sparse decode that
// merges its partials (DecodeAttentionParams::spec_buffer), against the CPU twins: the selection
// equals TopBlocks id for id, and the attention over those blocks equals PagedAttention within the
// decode's tolerance, whether the blocks attended to before the tail's end were all selected
// (upper hints from an identical step, or above every score: only the current block), were not
// (an upper hint below the threshold: the shares start over), or there was no upper hint (the
// first step: the decode reads the row). Keys and queries are small integers, so every score is
// exact in fp32; a small softmax scale keeps the attention spread over many keys.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/selection.h"
#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/cuda_test_util.h"
#include "kernels/cuda/selection_cuda.h"
#include "kernels/testing/tolerance.h"

namespace resa::cuda {
namespace {

using resa::testing::AllClose;
using resa::testing::kBF16;
using testing::BuildCache;
using testing::CudaTest;
using testing::DeviceBuffer;
using testing::PageOrder;
using testing::TestCache;
using testing::ToBf16;

struct SpecCase {
  std::string name;
  std::vector<int32_t> lens;
  int d;
  int group;
  PageOrder order = PageOrder::kGrouped;
};

std::string SpecName(const ::testing::TestParamInfo<SpecCase>& info) {
  const SpecCase& c = info.param;
  return c.name + "_d" + std::to_string(c.d) + "_g" + std::to_string(c.group) +
         (c.order == PageOrder::kGrouped ? "" : "_shuffled");
}

std::vector<SpecCase> SpecCases() {
  return {
      {"len262144", {262144}, 128, 6},  // 16384 blocks, 64 chunks: one a CTA
      {"len140001", {140001}, 64, 7},
      {"len200000", {200000}, 128, 3, PageOrder::kShuffled},  // the per-page summary loads
      // 8 rows, 16 CTAs a row: 4 chunks a CTA; a short row (no hint, no speculation) among them.
      {"batch4", {262144, 140001, 17, 131073}, 128, 7},
      {"batch2", {150001, 262144}, 64, 6},
  };
}

// Small-integer queries [batch][hkv * g][d] whose group means are exact (as the selection tests'
// IntegerQueries: each group's heads are the pooled query plus deltas summing to zero).
void Queries(int batch, int hkv, int g, int d, std::mt19937& rng, std::vector<float>* q,
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
        float sum = 0.0f;
        for (int j = 0; j + 1 < g; ++j) {
          const float delta = float((j % 2 == 0 ? 1 : -1) * (j / 2 + 1));
          (*q)[((size_t(b) * hq) + h * g + j) * d + i] = base + delta;
          sum += delta;
        }
        (*q)[((size_t(b) * hq) + h * g + g - 1) * d + i] = base - sum;
      }
    }
  }
}

class SpeculativeAttentionTest : public CudaTest, public ::testing::WithParamInterface<SpecCase> {};

TEST_P(SpeculativeAttentionTest, SameBlocksAndAttentionAsTheCpu) {
  const SpecCase& tc = GetParam();
  const int hkv = 2, g = tc.group, hq = hkv * g, d = tc.d;
  const int batch = int(tc.lens.size());
  const float scale = 2e-4f;
  std::vector<int32_t> before(batch);
  for (int b = 0; b < batch; ++b) before[b] = tc.lens[b] - 1;
  TestCache cache;
  std::uniform_int_distribution<int> wide(-100, 100);
  BuildCache(
      cache, hkv, d, tc.lens, 21, [&](std::mt19937& rng) { return float(wide(rng)); }, &before, 1,
      tc.order);
  std::mt19937 rng(22);
  std::vector<float> knew(size_t(batch) * hkv * d), vnew(knew.size()), q, pooled;
  for (auto& x : knew) x = float(wide(rng));
  for (auto& x : vnew) x = float(wide(rng));
  Queries(batch, hkv, g, d, rng, &q, &pooled);

  // CPU twin: write, score, select, attend. hinted_rows: rows whose length lets them use a hint
  // (8193-16385 blocks keeping 1 < n < M), the rows that speculate.
  const int32_t stride =
      NumSelectedBlocks((cache.max_len() + kPageTokens - 1) / kPageTokens, 0.1f, 16);
  std::vector<int32_t> want_blocks(size_t(batch) * hkv * stride, -1), want_n(batch);
  int64_t hinted_rows = 0;
  for (int b = 0; b < batch; ++b) {
    const int32_t pos = tc.lens[b] - 1;
    WriteTokenKv(cache.cpu, cache.table(b)[pos / kPageTokens], pos % kPageTokens,
                 knew.data() + size_t(b) * hkv * d, vnew.data() + size_t(b) * hkv * d);
    const int32_t m = (tc.lens[b] + kPageTokens - 1) / kPageTokens;
    std::vector<float> scores(size_t(hkv) * m);
    ScoreBlocks(cache.cpu, pooled.data() + size_t(b) * hkv * d, cache.table(b), tc.lens[b],
                scores.data());
    const int32_t n = NumSelectedBlocks(m, 0.1f, 16);
    want_n[b] = n;
    std::vector<int32_t> top(size_t(hkv) * n);
    TopBlocks(scores.data(), hkv, m, n, top.data());
    for (int h = 0; h < hkv; ++h) {
      std::copy(top.begin() + size_t(h) * n, top.begin() + size_t(h + 1) * n,
                want_blocks.begin() + (size_t(b) * hkv + h) * stride);
    }
    if (n > 1 && n < m && m - 1 >= 8192 && m - 1 <= 16384) hinted_rows += hkv;
  }
  std::vector<AttentionRow> rows(batch);
  for (int b = 0; b < batch; ++b) {
    rows[b].page_table = cache.table(b);
    rows[b].num_keys = tc.lens[b];
    rows[b].sparse = true;
    rows[b].blocks = want_blocks.data() + size_t(b) * hkv * stride;
    rows[b].num_blocks = want_n[b];
    rows[b].blocks_stride = stride;
  }
  const AttentionParams ap{hq, scale};
  std::vector<float> want(size_t(batch) * hq * d), want_lse(size_t(batch) * hq);
  PagedAttention(cache.cpu, ap, q.data(), rows, want.data(), want_lse.data());

  // GPU: the selection with hints and speculation, then the sparse decode of its blocks, on one
  // workspace as the model runs them.
  DeviceBuffer<uint16_t> dq(ToBf16(q)), dk(ToBf16(knew)), dv(ToBf16(vnew));
  DeviceBuffer<int32_t> dblocks(size_t(batch) * hkv * stride), dnum(batch);
  DeviceBuffer<uint32_t> dhints(size_t(batch) * hkv), dupper(size_t(batch) * hkv);
  dhints.Fill(0);
  dupper.Fill(0);
  SelectBlocksParams s;
  s.kv = cache.gpu();
  s.q = testing::AsBf16(dq.get());
  s.k_new = testing::AsBf16(dk.get());
  s.v_new = testing::AsBf16(dv.get());
  s.batch = batch;
  s.num_heads = hq;
  s.num_keys = cache.dlens.get();
  s.page_tables = cache.dtables.get();
  s.page_table_stride = cache.page_table_stride;
  s.max_num_keys = cache.max_len();
  s.ratio = 0.1f;
  s.min_blocks = 16;
  s.blocks = dblocks.get();
  s.num_blocks = dnum.get();
  s.blocks_stride = stride;
  s.hints = dhints.get();
  s.spec.upper_hints = dupper.get();
  s.spec.scale = scale;
  const int slots = SpeculationSlots(s);
  ASSERT_GT(slots, 0) << "this launch should be able to speculate";
  DeviceBuffer<char> spec(SpeculationBytes(s));
  spec.Fill(0xff);  // stale counts, marks and partials: each launch must write what it uses
  s.spec.buffer = spec.get();
  s.spec.bytes = spec.size();

  DeviceBuffer<float> dout(want.size()), dlse(want_lse.size());
  DecodeAttentionParams p;
  p.kv = cache.gpu();
  p.q = s.q;
  p.out = dout.get();
  p.lse_ln = dlse.get();
  p.batch = batch;
  p.num_heads = hq;
  p.scale = scale;
  p.num_keys = cache.dlens.get();
  p.page_tables = cache.dtables.get();
  p.page_table_stride = cache.page_table_stride;
  p.max_num_keys = cache.max_len();
  p.blocks = dblocks.get();
  p.num_blocks = dnum.get();
  p.blocks_stride = stride;
  p.max_num_blocks = stride;
  ASSERT_TRUE(DecodeAttentionCanSpeculate(p));
  p.spec_buffer = spec.get();
  p.spec_slots = slots;
  DeviceBuffer<char> ws(std::max(SelectBlocksWorkspaceBytes(s), DecodeAttentionWorkspaceBytes(p)));
  ws.Fill(0);
  s.workspace = p.workspace = ws.get();
  s.workspace_bytes = p.workspace_bytes = ws.size();

  // Runs: 0 from zeroed hints (no upper hint: nothing speculated, upper hints left); 1 the same
  // step again (upper hints from an identical step: published); 2 upper hints of -FLT_MAX (every
  // block >= them: dropped, the threshold is above); 3 upper hints of +FLT_MAX (only block M - 1
  // is >= them: published, one attended block a row); 4 as 1 with early dependents.
  const float lowest = -std::numeric_limits<float>::max(),
              highest = std::numeric_limits<float>::max();
  uint32_t lowest_bits, highest_bits;
  std::memcpy(&lowest_bits, &lowest, 4);
  std::memcpy(&highest_bits, &highest, 4);
  std::vector<uint32_t> upper_left;
  for (int rep = 0; rep < 5; ++rep) {
    if (rep == 2) dupper.Upload(std::vector<uint32_t>(batch * hkv, lowest_bits));
    if (rep == 3) dupper.Upload(std::vector<uint32_t>(batch * hkv, highest_bits));
    if (rep == 4) dupper.Upload(upper_left);
    s.early_dependents = rep == 4;
    dblocks.Fill(0xff);
    dout.Fill(0xff);  // NaN: every output must be written
    dlse.Fill(0xff);
    const SelectionHintCounts c0 = ReadSelectionHintCounts().value();
    ASSERT_TRUE(SelectBlocksCuda(s, nullptr).ok());
    ASSERT_TRUE(DecodeAttentionCuda(p, nullptr).ok());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const SelectionHintCounts c1 = ReadSelectionHintCounts().value();
    if (rep == 0) upper_left = dupper.Download();
    const std::vector<int32_t> got = dblocks.Download(), got_n = dnum.Download();
    for (int b = 0; b < batch; ++b) {
      ASSERT_EQ(got_n[b], want_n[b]) << "run " << rep << " sequence " << b;
      for (int h = 0; h < hkv; ++h) {
        const size_t at = (size_t(b) * hkv + h) * stride;
        ASSERT_TRUE(
            std::equal(got.begin() + at, got.begin() + at + want_n[b], want_blocks.begin() + at))
            << "run " << rep << " sequence " << b << " head " << h;
      }
    }
    // O in units of the largest |V| (100): the decode rounds P to bf16 before P V, so a row
    // of few keys is off by about 2^-9 |V|.
    std::vector<float> out = dout.Download(), want_o = want;
    for (float& x : out) x /= 100.0f;
    for (float& x : want_o) x /= 100.0f;
    const std::vector<float> lse = dlse.Download();
    EXPECT_TRUE(AllClose(out.data(), want_o.data(), want_o.size(), kBF16)) << "run " << rep;
    EXPECT_TRUE(AllClose(lse.data(), want_lse.data(), want_lse.size(), kBF16)) << "run " << rep;
    const int64_t published = c1.speculated - c0.speculated,
                  dropped = c1.speculation_dropped - c0.speculation_dropped;
    switch (rep) {
      case 0:
        EXPECT_EQ(published + dropped, 0) << "no upper hints yet";
        break;
      case 2:
        EXPECT_EQ(published, 0);
        EXPECT_EQ(dropped, hinted_rows);
        break;
      default:  // an identical step's upper hints, or only the current block
        EXPECT_EQ(published, hinted_rows) << "run " << rep << " (" << dropped << " dropped)";
        break;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, SpeculativeAttentionTest, ::testing::ValuesIn(SpecCases()),
                         SpecName);

class SpeculationArgsTest : public CudaTest {};

// Launches that cannot speculate take no buffer: groups of more than 8 query heads, rows the
// hints do not reach, the throughput kernel; a decode whose splits fold in clusters neither.
TEST_F(SpeculationArgsTest, LaunchesThatCannotSpeculateRefuseTheBuffer) {
  SelectBlocksParams s;
  s.kv.num_kv_heads = 2;
  s.kv.head_dim = 128;
  s.num_heads = 12;
  s.batch = 1;
  s.max_num_keys = 262144;
  s.blocks_stride = NumSelectedBlocksCuda(16384, 0.1f, 16);
  uint32_t dummy = 0;
  s.hints = &dummy;
  EXPECT_GT(SpeculationSlots(s), 0);
  EXPECT_GT(SpeculationBytes(s), 0u);
  s.num_heads = 2 * 9;  // a group of 9
  EXPECT_EQ(SpeculationSlots(s), 0);
  EXPECT_EQ(SpeculationBytes(s), 0u);
  s.num_heads = 12;
  s.hints = nullptr;
  EXPECT_EQ(SpeculationSlots(s), 0) << "no hints";
  s.hints = &dummy;
  s.max_num_keys = 32768;  // rows below the hinted range
  EXPECT_EQ(SpeculationSlots(s), 0);
  s.max_num_keys = 300001;  // rows past 16385 blocks
  EXPECT_EQ(SpeculationSlots(s), 0);
  s.max_num_keys = 262144;
  s.batch = 16;  // 32 rows: the latency kernel, but no hints past 16 rows
  EXPECT_EQ(SpeculationSlots(s), 0);

  // SelectBlocksCuda refuses a buffer for a launch that cannot speculate, and a short buffer.
  TestCache cache;
  BuildCache(cache, 2, 128, {4097}, 3, [](std::mt19937&) { return 1.0f; });
  DeviceBuffer<uint16_t> dq(std::vector<uint16_t>(12 * 128, 0));
  DeviceBuffer<int32_t> dblocks(64), dnum(1);
  DeviceBuffer<uint32_t> dh(2), du(2);
  DeviceBuffer<char> buf(1 << 20), ws(1 << 20);
  ws.Fill(0);
  SelectBlocksParams t;
  t.kv = cache.gpu();
  t.q = testing::AsBf16(dq.get());
  t.batch = 1;
  t.num_heads = 12;
  t.num_keys = cache.dlens.get();
  t.page_tables = cache.dtables.get();
  t.page_table_stride = cache.page_table_stride;
  t.max_num_keys = 4097;
  t.blocks = dblocks.get();
  t.num_blocks = dnum.get();
  t.blocks_stride = 64;
  t.hints = dh.get();
  t.workspace = ws.get();
  t.workspace_bytes = ws.size();
  t.spec.buffer = buf.get();
  t.spec.bytes = buf.size();
  t.spec.upper_hints = du.get();
  t.spec.scale = 0.1f;
  EXPECT_EQ(SelectBlocksCuda(t, nullptr).code(), absl::StatusCode::kInvalidArgument);

  DecodeAttentionParams p;
  p.kv = cache.gpu();
  p.q = t.q;
  p.batch = 1;
  p.num_heads = 12;
  p.scale = 0.1f;
  p.num_keys = cache.dlens.get();
  p.page_tables = cache.dtables.get();
  p.page_table_stride = cache.page_table_stride;
  p.max_num_keys = 4097;
  p.spec_buffer = buf.get();
  p.spec_slots = 4;
  DeviceBuffer<float> dout(12 * 128);
  p.out = dout.get();
  p.workspace = ws.get();
  p.workspace_bytes = ws.size();
  EXPECT_EQ(DecodeAttentionCuda(p, nullptr).code(), absl::StatusCode::kInvalidArgument)
      << "dense rows";
  p.blocks = dblocks.get();
  p.num_blocks = dnum.get();
  p.blocks_stride = 64;
  p.max_num_blocks = 64;
  p.spec_slots = 0;
  EXPECT_EQ(DecodeAttentionCuda(p, nullptr).code(), absl::StatusCode::kInvalidArgument)
      << "no slots";
}

}  // namespace
}  // namespace resa::cuda
