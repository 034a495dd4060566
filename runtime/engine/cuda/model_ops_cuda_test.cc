// The CUDA backend's model ops against their CPU twins (model_ops_ref.h), over many shapes.
#include "runtime/engine/cuda/model_ops_cuda.h"

#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/cuda_test_util.h"
#include "kernels/cuda/selection_cuda.h"
#include "kernels/testing/tolerance.h"
#include "runtime/engine/cuda/model_ops_ref.h"
#include "runtime/engine/cuda/model_ops_test_util.h"

namespace resa::cuda {
namespace {

using ops_test::AllClose;
using ops_test::AsBf16;
using ops_test::Bf16ToFloat;
using ops_test::CudaOpsTest;
using ops_test::DeviceBuffer;
using ops_test::FromBf16;
using ops_test::kBf16Ulp;
using ops_test::kF32Sum;
using ops_test::Noise;
using ops_test::QkvRopeFor;

class ModelOpsTest : public testing::CudaTest,
                     public ::testing::WithParamInterface<std::tuple<int, int>> {};

TEST_P(ModelOpsTest, EmbedAndAddRmsNorm) {
  const auto [rows, dim] = GetParam();
  const int vocab = 97;
  const std::vector<float> table = Noise(size_t(vocab) * dim, 1);
  std::vector<int32_t> tokens(rows);
  for (int r = 0; r < rows; ++r) tokens[r] = (r * 37 + 11) % vocab;
  const std::vector<float> add = Noise(size_t(rows) * dim, 2);
  std::vector<float> w = Noise(dim, 3, 0.1f);
  for (float& x : w) x += 1.0f;
  DeviceBuffer<uint16_t> dtable(testing::ToBf16(table));
  DeviceBuffer<int32_t> dtokens(tokens);
  DeviceBuffer<float> dh(size_t(rows) * dim), dadd(add), dw(w);
  DeviceBuffer<uint16_t> dx(size_t(rows) * dim);
  dh.Fill(0xff);
  dx.Fill(0xff);
  ASSERT_TRUE(EmbedCuda(AsBf16(dtable.get()), dtokens.get(), rows, dim, dh.get(), nullptr).ok());
  std::vector<float> h(size_t(rows) * dim), x(h.size());
  ref::Embed(table.data(), tokens.data(), rows, dim, h.data());
  ASSERT_TRUE(AllClose(dh.Download().data(), h.data(), h.size(), {0, 0}));

  // EmbedRmsNormCuda: the bits of EmbedCuda and then AddRmsNormCuda without an add.
  DeviceBuffer<float> dh1(size_t(rows) * dim), dh2(size_t(rows) * dim);
  DeviceBuffer<uint16_t> dx1(size_t(rows) * dim), dx2(size_t(rows) * dim);
  dh2.Fill(0xff);
  dx2.Fill(0xff);
  ASSERT_TRUE(EmbedCuda(AsBf16(dtable.get()), dtokens.get(), rows, dim, dh1.get(), nullptr).ok());
  ASSERT_TRUE(
      AddRmsNormCuda(dh1.get(), nullptr, dw.get(), rows, dim, 1e-6f, AsBf16(dx1.get()), nullptr)
          .ok());
  ASSERT_TRUE(EmbedRmsNormCuda(AsBf16(dtable.get()), dtokens.get(), rows, dim, dw.get(), 1e-6f,
                               dh2.get(), AsBf16(dx2.get()), nullptr)
                  .ok());
  EXPECT_EQ(dh2.Download(), dh1.Download());
  EXPECT_EQ(dx2.Download(), dx1.Download());
  std::vector<float> x0(h.size()), h0 = h;
  ref::AddRmsNorm(h0.data(), nullptr, w.data(), rows, dim, 1e-6f, x0.data());
  EXPECT_TRUE(AllClose(Bf16ToFloat(dx2.Download()).data(), x0.data(), x0.size(), kBf16Ulp));
  EXPECT_FALSE(EmbedRmsNormCuda(AsBf16(dtable.get()), dtokens.get(), rows, dim, dw.get(), 1e-6f,
                                dh2.get(), nullptr, nullptr)
                   .ok());

  ASSERT_TRUE(AddRmsNormCuda(dh.get(), dadd.get(), dw.get(), rows, dim, 1e-6f,
                             AsBf16(dx.get()), nullptr)
                  .ok());
  ref::AddRmsNorm(h.data(), add.data(), w.data(), rows, dim, 1e-6f, x.data());
  EXPECT_TRUE(AllClose(dh.Download().data(), h.data(), h.size(), ::resa::testing::kF32));
  EXPECT_TRUE(AllClose(Bf16ToFloat(dx.Download()).data(), x.data(), x.size(), kBf16Ulp));
}

TEST_P(ModelOpsTest, SiluMul) {
  const auto [rows, inter] = GetParam();
  const std::vector<float> gu = Noise(size_t(rows) * 2 * inter, 4, 3.0f);
  DeviceBuffer<float> dgu(gu);
  DeviceBuffer<uint16_t> dact(size_t(rows) * inter);
  dact.Fill(0xff);
  ASSERT_TRUE(SiluMulCuda(dgu.get(), rows, inter, AsBf16(dact.get()), nullptr).ok());
  std::vector<float> act(size_t(rows) * inter);
  ref::SiluMul(gu.data(), rows, inter, act.data());
  const std::vector<uint16_t> from_f32 = dact.Download();
  EXPECT_TRUE(AllClose(Bf16ToFloat(from_f32).data(), act.data(), act.size(), kBf16Ulp));
  // bf16 gate_up (the values are bf16 already): the same bits as from fp32.
  DeviceBuffer<uint16_t> dgu16(testing::ToBf16(gu));
  dact.Fill(0xff);
  ASSERT_TRUE(SiluMulCuda(AsBf16(dgu16.get()), rows, inter, AsBf16(dact.get()), nullptr).ok());
  EXPECT_EQ(dact.Download(), from_f32);
}

INSTANTIATE_TEST_SUITE_P(Shapes, ModelOpsTest,
                         ::testing::Combine(::testing::Values(1, 3, 8, 17),
                                            ::testing::Values(64, 75, 192, 576, 1536, 3584, 5000)));

// fp32 -> bf16, round to nearest even, exactly: aligned (four elements a thread) and not (one at
// a time), lengths with and without a tail.
TEST_F(CudaOpsTest, ToBf16RoundsToNearestEven) {
  for (const int64_t n : {int64_t(1), int64_t(3), int64_t(4), int64_t(1001), int64_t(65536)}) {
    for (const int offset : {0, 1}) {
      std::vector<float> x = Noise(size_t(n + offset), 7, 100.0f);
      std::mt19937 rng(static_cast<uint32_t>(n));
      std::uniform_real_distribution<float> u(-1.0f, 1.0f);
      for (float& v : x) v += u(rng) * 1e-3f;  // not bf16-representable
      DeviceBuffer<float> dx(x);
      DeviceBuffer<uint16_t> dy(size_t(n + offset));
      dy.Fill(0xff);
      ASSERT_TRUE(ToBf16Cuda(dx.get() + offset, n, AsBf16(dy.get()) + offset, nullptr).ok());
      const std::vector<uint16_t> y = dy.Download();
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_EQ(FromBf16(y[size_t(i + offset)]), ref::RoundBf16(x[size_t(i + offset)]))
            << "n " << n << " offset " << offset << " i " << i;
      }
    }
  }
}

// (rows, heads, kv heads, head_dim, bias)
class QkvRopeTest : public testing::CudaTest,
                    public ::testing::WithParamInterface<std::tuple<int, int, int, int, bool>> {};

TEST_P(QkvRopeTest, MatchesRopeNeox) {
  const auto [rows, heads, kv_heads, d, with_bias] = GetParam();
  const int total = (heads + 2 * kv_heads) * d;
  const std::vector<float> qkv = Noise(size_t(rows) * total, 5);
  const std::vector<float> bias = Noise(total, 6, 0.5f);
  std::vector<int32_t> pos(rows);
  for (int r = 0; r < rows; ++r) pos[r] = r == 0 ? 262143 : r * 7919 % 262144;
  DeviceBuffer<float> dqkv(qkv), dbias(bias);
  DeviceBuffer<int32_t> dpos(pos);
  DeviceBuffer<uint16_t> dq(size_t(rows) * heads * d), dk(size_t(rows) * kv_heads * d),
      dv(size_t(rows) * kv_heads * d);
  dq.Fill(0xff);
  dk.Fill(0xff);
  dv.Fill(0xff);
  const QkvRopeParams p = QkvRopeFor(rows, heads, kv_heads, d, dqkv.get(),
                                     with_bias ? dbias.get() : nullptr, dpos.get(), dq, dk, dv);
  ASSERT_TRUE(QkvRopeCuda(p, nullptr).ok());
  std::vector<float> q(dq.size()), k(dk.size()), v(dv.size());
  ref::QkvRope(qkv.data(), with_bias ? bias.data() : nullptr, pos.data(), rows, heads, kv_heads,
               d, 1e6f, q.data(), k.data(), v.data());
  EXPECT_TRUE(AllClose(Bf16ToFloat(dq.Download()).data(), q.data(), q.size(), kBf16Ulp));
  EXPECT_TRUE(AllClose(Bf16ToFloat(dk.Download()).data(), k.data(), k.size(), kBf16Ulp));
  EXPECT_TRUE(AllClose(Bf16ToFloat(dv.Download()).data(), v.data(), v.size(), {0, 0}));
}

INSTANTIATE_TEST_SUITE_P(Shapes, QkvRopeTest,
                         ::testing::Values(std::make_tuple(1, 12, 2, 128, true),
                                           std::make_tuple(5, 9, 3, 64, false),
                                           std::make_tuple(33, 28, 4, 128, true),
                                           std::make_tuple(2, 6, 2, 32, true)));

// (rows, n, k)
class GemvTest : public testing::CudaTest,
                 public ::testing::WithParamInterface<std::tuple<int, int, int>> {};

TEST_P(GemvTest, MatchesFp64) {
  const auto [rows, n, k] = GetParam();
  const std::vector<float> w = Noise(size_t(n) * k, 7, 0.05f), x = Noise(size_t(rows) * k, 8);
  DeviceBuffer<uint16_t> dw(testing::ToBf16(w)), dx(testing::ToBf16(x));
  DeviceBuffer<float> dy(size_t(rows) * n);
  dy.Fill(0xff);
  ASSERT_TRUE(GemvBf16Cuda(AsBf16(dw.get()), AsBf16(dx.get()), rows, n, k, dy.get(), nullptr).ok());
  std::vector<float> y(dy.size());
  ref::Gemv(w.data(), x.data(), rows, n, k, y.data());
  EXPECT_TRUE(AllClose(dy.Download().data(), y.data(), y.size(), kF32Sum));
}

TEST_P(GemvTest, Fp32InputMatchesFp64) {
  const auto [rows, n, k] = GetParam();
  std::vector<float> w = Noise(size_t(n) * k, 12, 0.05f), x(size_t(rows) * k);
  std::mt19937 rng(13);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  for (float& v : x) v = u(rng);  // not bf16-representable: used as fp32
  DeviceBuffer<uint16_t> dw(testing::ToBf16(w));
  DeviceBuffer<float> dx(x), dy(size_t(rows) * n);
  dy.Fill(0xff);
  ASSERT_TRUE(GemvBf16Cuda(AsBf16(dw.get()), dx.get(), rows, n, k, dy.get(), nullptr).ok());
  std::vector<float> y(dy.size());
  ref::Gemv(w.data(), x.data(), rows, n, k, y.data());
  EXPECT_TRUE(AllClose(dy.Download().data(), y.data(), y.size(), kF32Sum));
}

INSTANTIATE_TEST_SUITE_P(Shapes, GemvTest,
                         ::testing::Combine(::testing::Values(1, 2, 3, 5, 8),
                                            ::testing::Values(1, 37, 1536),
                                            ::testing::Values(8, 200, 1536, 8960)));

TEST_F(CudaOpsTest, GemvRejectsBadShapes) {
  const __nv_bfloat16* none = nullptr;
  EXPECT_FALSE(GemvBf16Cuda(none, none, 9, 4, 8, nullptr, nullptr).ok());    // > 8 rows
  EXPECT_FALSE(GemvBf16Cuda(none, none, 1, 4, 12, nullptr, nullptr).ok());   // k % 8 != 0
  GemvOptions bad_split;
  bad_split.k_split = 3;
  EXPECT_FALSE(GemvBf16Cuda(none, none, 1, 4, 8, nullptr, nullptr, bad_split).ok());
}

// The decode layers of DeepSeek-R1-Distill-Qwen 1.5B and 7B (weights [n][k]), o_proj with fp32 x.
struct RealGemvShape {
  const char* name;
  int n, k;
};
constexpr RealGemvShape kRealGemvShapes[] = {
    {"q15b_qkv", 2048, 1536},  {"q15b_o", 1536, 1536},         {"q15b_gate_up", 17920, 1536},
    {"q15b_down", 1536, 8960}, {"q15b_lm_head", 151936, 1536}, {"q7b_qkv", 4608, 3584},
    {"q7b_o", 3584, 3584},     {"q7b_gate_up", 37888, 3584},   {"q7b_down", 3584, 18944},
};

// Multiples of 1/64 in [-1/4, 1/4]: exact in bf16, and every fp32 partial sum of products over
// k <= 18944 is an integer multiple of 2^-12 below 2^24 of them, so any summation order gives
// the exact result (the test compares bits, not tolerances).
std::vector<float> SmallMultiples(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> v(n);
  for (float& x : v) x = float(int(rng() % 33) - 16) / 64.0f;
  return v;
}

// Every launch plan the kernel offers, the automatic one, programmatic dependent launch and the
// legacy kernel, on the real shapes with rows 1..8 and both x types: exact against the CPU.
class GemvRealShapeTest : public testing::CudaTest,
                          public ::testing::WithParamInterface<std::tuple<int, bool>> {};

TEST_P(GemvRealShapeTest, ExactOnEveryPlan) {
  const auto [shape_index, fp32_x] = GetParam();
  const RealGemvShape s = kRealGemvShapes[shape_index];
  const std::vector<float> w = SmallMultiples(size_t(s.n) * s.k, 21 + shape_index);
  const std::vector<float> x = SmallMultiples(size_t(kGemvMaxRows) * s.k, 22);
  // Reference for every `stride`-th output (all of them for the per-layer matrices).
  const int stride = s.n > 20000 ? 61 : 1;
  std::vector<int> cols;
  for (int j = 0; j < s.n; j += stride) cols.push_back(j);
  cols.push_back(s.n - 1);
  std::vector<float> ref(size_t(kGemvMaxRows) * cols.size());
  for (int m = 0; m < kGemvMaxRows; ++m) {
    for (size_t c = 0; c < cols.size(); ++c) {
      double sum = 0.0;
      const float* wr = w.data() + size_t(cols[c]) * s.k;
      for (int i = 0; i < s.k; ++i) sum += double(wr[i]) * x[size_t(m) * s.k + i];
      ref[m * cols.size() + c] = float(sum);
    }
  }
  DeviceBuffer<uint16_t> dw(testing::ToBf16(w)), dxb(testing::ToBf16(x));
  DeviceBuffer<float> dxf(x), dy(size_t(kGemvMaxRows) * s.n);
  std::vector<GemvOptions> plans(4);
  plans[1].overlap_previous = true;
  plans[2].legacy = true;
  plans[3].cuda_cores = true;  // batches on the CUDA cores
  for (int split : {1, 2, 4, 8}) {
    for (int u : {2, 4, 8}) {
      for (int order : {1, 2}) {
        GemvOptions o{false, split, u, false};
        o.k_order = order;
        plans.push_back(o);
      }
    }
  }
  for (int rows = 1; rows <= kGemvMaxRows; ++rows) {
    for (const GemvOptions& o : plans) {
      dy.Fill(0xff);
      const absl::Status st =
          fp32_x ? GemvBf16Cuda(AsBf16(dw.get()), dxf.get(), rows, s.n, s.k, dy.get(), nullptr, o)
                 : GemvBf16Cuda(AsBf16(dw.get()), AsBf16(dxb.get()), rows, s.n, s.k, dy.get(),
                                nullptr, o);
      ASSERT_TRUE(st.ok()) << st;
      const std::vector<float> y = dy.Download();
      size_t bad = 0;
      for (int m = 0; m < rows; ++m) {
        for (size_t c = 0; c < cols.size(); ++c) {
          const float got = y[size_t(m) * s.n + cols[c]], want = ref[m * cols.size() + c];
          if (got != want && bad++ < 3) {
            ADD_FAILURE() << s.name << " rows " << rows << " split " << o.k_split << " loads "
                          << o.loads_per_lane << " order " << o.k_order << " pdl "
                          << o.overlap_previous << " legacy " << o.legacy << " cuda_cores "
                          << o.cuda_cores << ": y[" << m << "][" << cols[c] << "] = " << got
                          << ", want " << want;
          }
        }
      }
      ASSERT_EQ(bad, 0u);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GemvRealShapeTest,
                         ::testing::Combine(::testing::Range(0, 9), ::testing::Bool()));

// Random (inexact) inputs: the same bits on every run and with or without overlap, and within
// the fp32 tolerance of the fp64 reference on the longest k.
TEST_F(CudaOpsTest, GemvIsRepeatableAndOverlapDoesNotChangeBits) {
  const int n = 3584, k = 18944;
  const std::vector<float> w = Noise(size_t(n) * k, 31, 0.05f), x = Noise(size_t(8) * k, 32);
  DeviceBuffer<uint16_t> dw(testing::ToBf16(w)), dx(testing::ToBf16(x));
  DeviceBuffer<float> dy(size_t(8) * n);
  for (int rows : {1, 3, 8}) {
    std::vector<std::vector<float>> runs;
    for (bool overlap : {false, false, true}) {
      GemvOptions o;
      o.overlap_previous = overlap;
      dy.Fill(0xff);
      ASSERT_TRUE(
          GemvBf16Cuda(AsBf16(dw.get()), AsBf16(dx.get()), rows, n, k, dy.get(), nullptr, o).ok());
      runs.push_back(dy.Download());
      runs.back().resize(size_t(rows) * n);
    }
    EXPECT_EQ(runs[0], runs[1]) << "rows " << rows;
    EXPECT_EQ(runs[0], runs[2]) << "rows " << rows;
    std::vector<float> y(size_t(rows) * n);
    ref::Gemv(w.data(), x.data(), rows, n, k, y.data());
    EXPECT_TRUE(AllClose(runs[0].data(), y.data(), y.size(), kF32Sum)) << "rows " << rows;
  }
}

// Overlapping launches read x only after the kernel before them completed: a conversion writes
// x, a GEMV reads it, a second GEMV reads the first one's output (fp32 x); buffers start as NaN.
TEST_F(CudaOpsTest, GemvOverlapWaitsForTheKernelBefore) {
  const int k1 = 1536, n1 = 1536, n2 = 2048, rows = 4;
  const std::vector<float> w1 = Noise(size_t(n1) * k1, 41, 0.05f);
  const std::vector<float> w2 = Noise(size_t(n2) * n1, 42, 0.05f);
  const std::vector<float> x = Noise(size_t(rows) * k1, 43);
  DeviceBuffer<uint16_t> dw1(testing::ToBf16(w1)), dw2(testing::ToBf16(w2)), dxb(x.size());
  DeviceBuffer<float> dx(x), dy1(size_t(rows) * n1), dy2(size_t(rows) * n2);
  GemvOptions o;
  o.overlap_previous = true;
  for (int rep = 0; rep < 20; ++rep) {
    dxb.Fill(0xff);
    dy1.Fill(0xff);
    dy2.Fill(0xff);
    ASSERT_TRUE(ToBf16Cuda(dx.get(), int64_t(x.size()), AsBf16(dxb.get()), nullptr).ok());
    ASSERT_TRUE(
        GemvBf16Cuda(AsBf16(dw1.get()), AsBf16(dxb.get()), rows, n1, k1, dy1.get(), nullptr, o)
            .ok());
    ASSERT_TRUE(
        GemvBf16Cuda(AsBf16(dw2.get()), dy1.get(), rows, n2, n1, dy2.get(), nullptr, o).ok());
    const std::vector<float> y1 = dy1.Download(), y2 = dy2.Download();
    std::vector<float> r1(y1.size()), r2(y2.size());
    ref::Gemv(w1.data(), x.data(), rows, n1, k1, r1.data());
    ref::Gemv(w2.data(), y1.data(), rows, n2, n1, r2.data());
    ASSERT_TRUE(AllClose(y1.data(), r1.data(), r1.size(), kF32Sum)) << "rep " << rep;
    ASSERT_TRUE(AllClose(y2.data(), r2.data(), r2.size(), kF32Sum)) << "rep " << rep;
  }
}

TEST_F(CudaOpsTest, GemvPlanFillsTheDevice) {
  // Short-n matrices split k; long-n ones keep whole rows per warp; a lane's loads cover its slice
  // in one batch where they fit.
  const GemvPlan down = PlanGemv(1, 1536, 8960, {});
  EXPECT_GT(down.k_split, 1);
  EXPECT_EQ(PlanGemv(1, 151936, 1536, {}).k_split, 1);
  for (int rows = 1; rows <= kGemvMaxRows; ++rows) {
    for (bool cuda_cores : {false, true}) {
      for (const RealGemvShape& s : kRealGemvShapes) {
        GemvOptions o;
        o.cuda_cores = cuda_cores;
        const GemvPlan p = PlanGemv(rows, s.n, s.k, o);
        EXPECT_TRUE(p.k_split == 1 || p.k_split == 2 || p.k_split == 4 || p.k_split == 8);
        EXPECT_TRUE(p.loads_per_lane == 2 || p.loads_per_lane == 4 || p.loads_per_lane == 8);
        // Batches on the tensor cores: a group of k_split warps a tile of 16 rows; batches dealt
        // round-robin for many tiles (gate_up, lm_head) and for long rows of few tiles (the down
        // projections).
        EXPECT_EQ(p.tensor_cores, rows > 1 && !cuda_cores) << s.name;
        const bool many = (s.n + 15) / 16 > 512;
        EXPECT_EQ(p.interleave, p.tensor_cores && (many || s.k >= kGemvInterleaveMinK)) << s.name;
        if (p.tensor_cores && many) {
          EXPECT_EQ(p.k_split, 4) << s.name;
          EXPECT_EQ(p.loads_per_lane, 4) << s.name;
        }
        const int per_group = p.tensor_cores ? 16 : rows == 1 ? 1 : 2;
        const int rows_per_block = per_group * (8 / p.k_split);
        EXPECT_EQ(p.blocks, (s.n + rows_per_block - 1) / rows_per_block) << s.name;
      }
    }
  }
}

class ArgmaxTest : public testing::CudaTest, public ::testing::WithParamInterface<int> {};

TEST_P(ArgmaxTest, TiesGoToTheLowestIndex) {
  const int n = GetParam(), rows = 4;
  std::vector<float> logits(size_t(rows) * n);
  std::mt19937 rng(9);
  for (float& x : logits) x = float(int(rng() % 50)) - 25.0f;  // many ties
  logits[size_t(1) * n + (n - 1)] = NAN;
  DeviceBuffer<float> dl(logits);
  DeviceBuffer<int32_t> dout(rows);
  ASSERT_TRUE(ArgmaxCuda(dl.get(), rows, n, dout.get(), nullptr).ok());
  const std::vector<int32_t> got = dout.Download();
  for (int r = 0; r < rows; ++r) {
    EXPECT_EQ(got[r], ref::Argmax(logits.data() + size_t(r) * n, n)) << "row " << r;
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, ArgmaxTest, ::testing::Values(1, 31, 1000, 151936));

// The summary slots of pages [pages, the end of their group) still hold the 0xff fill.
void ExpectPastPagesUntouched(const std::vector<uint16_t>& summary, int pages, int hkv, int d) {
  for (int page = pages; page % kSummaryGroup != 0; ++page) {
    for (int h = 0; h < hkv; ++h) {
      for (int part = 0; part < 2; ++part) {
        for (int i = 0; i < d; ++i) {
          ASSERT_EQ(summary[SummaryIndex(page, h, part, i, hkv, d)], 0xffff)
              << "page " << page << " head " << h << " part " << part << " dim " << i;
        }
      }
    }
  }
}

// Summaries in the device layout (paged_kv_cuda.h) equal the CPU-layout reference; page counts
// of a partial last group (9, 37: its other slots stay untouched) and of whole groups (32).
// Copies within a group and across groups move K, V and the (strided) summary of a page.
TEST_F(CudaOpsTest, SummarizeAndCopyPagesAreExact) {
  const int hkv = 2, d = 64;
  const PagedKvCuda shape{nullptr, nullptr, nullptr, hkv, d};
  for (int pages : {9, 32, 37}) {
    SCOPED_TRACE("pages " + std::to_string(pages));
    const std::vector<float> k = Noise(pages * shape.page_elems(), 10);
    const std::vector<float> v = Noise(k.size(), 11);
    DeviceBuffer<uint16_t> dk(testing::ToBf16(k)), dv(testing::ToBf16(v));
    DeviceBuffer<uint16_t> ds(SummaryPoolElems(pages, hkv, d));
    ds.Fill(0xff);
    ASSERT_TRUE(
        SummarizePagesCuda(AsBf16(dk.get()), pages, hkv, d, AsBf16(ds.get()), nullptr).ok());
    std::vector<float> s(size_t(pages) * shape.summary_page_elems());
    ref::SummarizePages(k.data(), pages, hkv, d, s.data());
    const std::vector<uint16_t> s1 = ds.Download();
    EXPECT_TRUE(
        AllClose(testing::FromDeviceSummary(s1, pages, hkv, d).data(), s.data(), s.size(), {0, 0}));
    ExpectPastPagesUntouched(s1, pages, hkv, d);
    // Pages 0 -> 7, 4 -> 2 (within the first group), pages - 1 -> 1 (across groups, but for 9).
    const std::vector<int32_t> from = {0, 4, pages - 1}, to = {7, 2, 1};
    DeviceBuffer<int32_t> src(from), dst(to);
    const PagedKvCuda kv{AsBf16(dk.get()), AsBf16(dv.get()), AsBf16(ds.get()), hkv, d};
    ASSERT_TRUE(CopyPagesCuda(kv, src.get(), dst.get(), int(from.size()), nullptr).ok());
    const std::vector<uint16_t> k2 = dk.Download(), v2 = dv.Download(), s2 = ds.Download();
    const std::vector<uint16_t> k1 = testing::ToBf16(k), v1 = testing::ToBf16(v);
    const size_t pe = shape.page_elems();
    std::vector<int32_t> now(pages);  // the page whose contents each page holds after the copy
    for (int page = 0; page < pages; ++page) now[page] = page;
    for (size_t c = 0; c < from.size(); ++c) now[to[c]] = from[c];
    for (int page = 0; page < pages; ++page) {
      for (size_t i = 0; i < pe; ++i) {
        ASSERT_EQ(k2[page * pe + i], k1[now[page] * pe + i]) << "K of page " << page;
        ASSERT_EQ(v2[page * pe + i], v1[now[page] * pe + i]) << "V of page " << page;
      }
      for (int h = 0; h < hkv; ++h) {
        for (int part = 0; part < 2; ++part) {
          for (int i = 0; i < d; ++i) {
            ASSERT_EQ(s2[SummaryIndex(page, h, part, i, hkv, d)],
                      s1[SummaryIndex(now[page], h, part, i, hkv, d)])
                << "summary of page " << page << " head " << h << " part " << part << " dim " << i;
          }
        }
      }
    }
    ExpectPastPagesUntouched(s2, pages, hkv, d);
  }
}

TEST_F(CudaOpsTest, UniformFillIsDeterministicAndInRange) {
  const int64_t n = 100003;
  DeviceBuffer<float> a(n), b(n);
  ASSERT_TRUE(FillUniformF32Cuda(a.get(), n, 42, 0.5f, 1.0f, nullptr).ok());
  ASSERT_TRUE(FillUniformF32Cuda(b.get(), n, 42, 0.5f, 1.0f, nullptr).ok());
  const std::vector<float> x = a.Download(), y = b.Download();
  double mean = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(x[i], y[i]);
    ASSERT_GE(x[i], 0.5f);
    ASSERT_LT(x[i], 1.5f);
    mean += x[i];
  }
  EXPECT_NEAR(mean / n, 1.0, 0.01);
}

}  // namespace
}  // namespace resa::cuda
