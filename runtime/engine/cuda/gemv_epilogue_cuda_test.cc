// The GEMV's fused epilogues against the unfused kernels and the CPU twins: SwiGLU (gate_up),
// bias and RoPE with the cache append (qkv), the residual add with the next norm's inputs (o_proj,
// down) and RowNorm inputs (gate_up, qkv), at one row (CUDA cores) and batches (tensor cores);
// the greedy arg-max of the one-row GEMV (lm_head).
#include <cmath>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/selection_cuda.h"
#include "runtime/engine/cuda/model_ops_cuda.h"
#include "runtime/engine/cuda/model_ops_ref.h"
#include "runtime/engine/cuda/model_ops_test_util.h"
#include "runtime/engine/sampler.h"

namespace resa::cuda {
namespace {

using ops_test::AllClose;
using ops_test::AsBf16;
using ops_test::Bf16ToFloat;
using ops_test::CudaOpsTest;
using ops_test::DeviceBuffer;
using ops_test::kF32Sum;
using ops_test::Noise;
using ops_test::QkvRopeFor;
using ops_test::Tolerance;

// The plans a GEMV with a pair epilogue is tested with: automatic, and every k split (at most
// 4 warps at one row, where pairs must not straddle blocks; 8 too on the tensor cores) with
// every loads-per-lane setting.
std::vector<GemvOptions> PairEpiloguePlans(int rows) {
  std::vector<GemvOptions> plans(1);  // automatic
  for (int split : {1, 2, 4, 8}) {
    if (split == 8 && rows == 1) continue;
    for (int u : {2, 4, 8}) plans.push_back(GemvOptions{false, split, u, false});
  }
  if (rows > 1) {  // batches dealt round-robin (the epilogue kernels' interleaved variants)
    for (int u : {2, 8}) {
      GemvOptions o{false, 4, u, false};
      o.k_order = 2;
      plans.push_back(o);
    }
  }
  return plans;
}

// The plain GEMV's options with the same plan as a pair-epilogue GEMV run with `o` (an
// automatic one-row plan of 8 warps a row becomes 4 there; batches plan alike).
GemvOptions UnfusedPlan(const GemvOptions& o, int rows, int n, int k) {
  GemvOptions unfused = o;
  if (rows == 1 && o.k_split == 0 && PlanGemv(1, n, k, o).k_split > 4) unfused.k_split = 4;
  return unfused;
}

// SwiGLU in the gate_up GEMV's epilogue, at 1, 3 and 8 rows: bit for bit the GEMV then
// SiluMulCuda with the same plan (the real gate_up shapes, automatic and explicit plans; a
// small shape whose automatic one-row plan of 8 warps per row becomes 4), and within a bf16 step
// of the CPU twins (Gemv, then SiluMul; the gate/up sums differ from fp64 in the last fp32 bits
// before the bf16 rounding).
TEST_F(CudaOpsTest, GemvSwiGluEqualsGemvThenSiluMul) {
  constexpr Tolerance kTwin{1e-4, 8e-3};
  struct Shape {
    int inter, k;
  };
  for (const Shape s : {Shape{8960, 1536}, Shape{18944, 3584}, Shape{64, 128}, Shape{200, 512}}) {
    const int n = 2 * s.inter;
    const std::vector<float> w = Noise(size_t(n) * s.k, 61, 0.05f);
    const std::vector<float> x = Noise(size_t(kGemvMaxRows) * s.k, 62);
    DeviceBuffer<uint16_t> dw(testing::ToBf16(w)), dx(testing::ToBf16(x)),
        dact(size_t(kGemvMaxRows) * s.inter), dact2(dact.size());
    DeviceBuffer<float> dgu(size_t(kGemvMaxRows) * n);
    for (int rows : {1, 3, 8}) {
      const size_t na = size_t(rows) * s.inter;
      for (const GemvOptions& o : PairEpiloguePlans(rows)) {
        const GemvOptions unfused = UnfusedPlan(o, rows, n, s.k);
        dact.Fill(0xff);
        dact2.Fill(0xff);
        ASSERT_TRUE(GemvSwiGluBf16Cuda(AsBf16(dw.get()), AsBf16(dx.get()), rows, s.inter, s.k,
                                       AsBf16(dact.get()), nullptr, o)
                        .ok());
        ASSERT_TRUE(GemvBf16Cuda(AsBf16(dw.get()), AsBf16(dx.get()), rows, n, s.k, dgu.get(),
                                 nullptr, unfused)
                        .ok());
        ASSERT_TRUE(SiluMulCuda(dgu.get(), rows, s.inter, AsBf16(dact2.get()), nullptr).ok());
        std::vector<uint16_t> a = dact.Download(), b = dact2.Download();
        a.resize(na);
        b.resize(na);
        ASSERT_EQ(a, b) << "rows " << rows << " inter " << s.inter << " k " << s.k << " split "
                        << o.k_split << " loads " << o.loads_per_lane << " order " << o.k_order;
      }
      std::vector<float> gu(size_t(rows) * n), act(na);
      ref::Gemv(w.data(), x.data(), rows, n, s.k, gu.data());
      ref::SiluMul(gu.data(), rows, s.inter, act.data());
      EXPECT_TRUE(AllClose(Bf16ToFloat(dact.Download()).data(), act.data(), act.size(), kTwin))
          << "rows " << rows << " inter " << s.inter;
    }
  }
  // Refused: the legacy and CUDA-core batch kernels, 8 warps a row at one row (pairs would
  // straddle blocks), a bad shape, more than kGemvMaxRows rows.
  DeviceBuffer<uint16_t> dw(size_t(128) * 64), dx(64 * 9), dact(64 * 9);
  GemvOptions legacy, split8, cuda_cores;
  legacy.legacy = true;
  split8.k_split = 8;
  cuda_cores.cuda_cores = true;
  for (const GemvOptions& o : {legacy, split8}) {
    EXPECT_EQ(GemvSwiGluBf16Cuda(AsBf16(dw.get()), AsBf16(dx.get()), 1, 64, 64, AsBf16(dact.get()),
                                 nullptr, o)
                  .code(),
              absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(GemvSwiGluBf16Cuda(AsBf16(dw.get()), AsBf16(dx.get()), 2, 64, 64, AsBf16(dact.get()),
                               nullptr, cuda_cores)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      GemvSwiGluBf16Cuda(AsBf16(dw.get()), AsBf16(dx.get()), 1, 64, 60, AsBf16(dact.get()), nullptr)
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GemvSwiGluBf16Cuda(AsBf16(dw.get()), AsBf16(dx.get()), kGemvMaxRows + 1, 64, 64,
                               AsBf16(dact.get()), nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// Bias and RoPE in the QKV GEMV's epilogue, at 1, 2 and 8 rows (positions of their own): bit
// for bit the GEMV then QkvRopeCuda with the same plan (the real qkv shapes with bias, a small
// one without; automatic and explicit plans), and within a bf16 step of the CPU twins (Gemv,
// then QkvRope).
TEST_F(CudaOpsTest, GemvQkvRopeEqualsGemvThenQkvRope) {
  constexpr Tolerance kTwin{1e-4, 8e-3};
  struct Shape {
    int heads, kv_heads, d, k;
    bool bias;
    int32_t pos;
  };
  for (const Shape s : {Shape{12, 2, 128, 1536, true, 262143}, Shape{28, 4, 128, 3584, true, 7},
                        Shape{9, 3, 64, 576, false, 40000}, Shape{2, 1, 32, 64, true, 0}}) {
    const int n = (s.heads + 2 * s.kv_heads) * s.d;
    const std::vector<float> w = Noise(size_t(n) * s.k, 71, 0.05f);
    const std::vector<float> x = Noise(size_t(kGemvMaxRows) * s.k, 72);
    const std::vector<float> bias = Noise(size_t(n), 73, 0.5f);
    std::vector<int32_t> pos(kGemvMaxRows);
    for (int m = 0; m < kGemvMaxRows; ++m) pos[size_t(m)] = s.pos + 977 * m;
    DeviceBuffer<uint16_t> dw(testing::ToBf16(w)), dx(testing::ToBf16(x));
    DeviceBuffer<float> dbias(bias), dqkv(size_t(kGemvMaxRows) * n);
    DeviceBuffer<int32_t> dpos(pos);
    const size_t nq = size_t(kGemvMaxRows) * s.heads * s.d,
                 nk = size_t(kGemvMaxRows) * s.kv_heads * s.d;
    DeviceBuffer<uint16_t> q1(nq), k1(nk), v1(nk), q2(nq), k2(nk), v2(nk);
    for (int rows : {1, 2, 8}) {
      auto params = [&](DeviceBuffer<uint16_t>& q, DeviceBuffer<uint16_t>& k,
                        DeviceBuffer<uint16_t>& v) {
        return QkvRopeFor(rows, s.heads, s.kv_heads, s.d, dqkv.get(),
                          s.bias ? dbias.get() : nullptr, dpos.get(), q, k, v);
      };
      for (const GemvOptions& o : PairEpiloguePlans(rows)) {
        const GemvOptions unfused = UnfusedPlan(o, rows, n, s.k);
        for (auto* b : {&q1, &k1, &v1, &q2, &k2, &v2}) b->Fill(0xff);
        ASSERT_TRUE(GemvQkvRopeBf16Cuda(AsBf16(dw.get()), AsBf16(dx.get()), s.k, params(q1, k1, v1),
                                        nullptr, o)
                        .ok());
        ASSERT_TRUE(GemvBf16Cuda(AsBf16(dw.get()), AsBf16(dx.get()), rows, n, s.k, dqkv.get(),
                                 nullptr, unfused)
                        .ok());
        ASSERT_TRUE(QkvRopeCuda(params(q2, k2, v2), nullptr).ok());
        const std::string where =
            "rows " + std::to_string(rows) + " heads " + std::to_string(s.heads) + " d " +
            std::to_string(s.d) + " split " + std::to_string(o.k_split) + " loads " +
            std::to_string(o.loads_per_lane) + " order " + std::to_string(o.k_order);
        ASSERT_EQ(q1.Download(), q2.Download()) << where;
        ASSERT_EQ(k1.Download(), k2.Download()) << where;
        ASSERT_EQ(v1.Download(), v2.Download()) << where;
      }
      std::vector<float> qkv(size_t(rows) * n), q(size_t(rows) * s.heads * s.d),
          k(size_t(rows) * s.kv_heads * s.d), v(k.size());
      ref::Gemv(w.data(), x.data(), rows, n, s.k, qkv.data());
      ref::QkvRope(qkv.data(), s.bias ? bias.data() : nullptr, pos.data(), rows, s.heads,
                   s.kv_heads, s.d, 1e6f, q.data(), k.data(), v.data());
      EXPECT_TRUE(AllClose(Bf16ToFloat(q1.Download()).data(), q.data(), q.size(), kTwin));
      EXPECT_TRUE(AllClose(Bf16ToFloat(k1.Download()).data(), k.data(), k.size(), kTwin));
      EXPECT_TRUE(AllClose(Bf16ToFloat(v1.Download()).data(), v.data(), v.size(), kTwin));
    }
  }
  // Refused: more than kGemvMaxRows rows, the cache append of several rows without a page table
  // stride, the legacy and CUDA-core batch kernels, 8 warps a row at one row (pairs would
  // straddle blocks).
  DeviceBuffer<uint16_t> dw(size_t(128) * 64), dx(64 * 9), dq(64 * 9), dk(32 * 9), dv(32 * 9);
  DeviceBuffer<int32_t> dpos(9);
  QkvRopeParams p = QkvRopeFor(1, 2, 1, 32, nullptr, nullptr, dpos.get(), dq, dk, dv);
  p.rows = kGemvMaxRows + 1;
  EXPECT_EQ(GemvQkvRopeBf16Cuda(AsBf16(dw.get()), AsBf16(dx.get()), 64, p, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  {
    DeviceBuffer<uint16_t> pool(size_t(16) * 32 * 4);
    DeviceBuffer<int32_t> table(1), keys(1);
    QkvRopeParams a = p;
    a.rows = 2;
    a.kv.k = AsBf16(pool.get());
    a.kv.v = AsBf16(pool.get());
    a.kv.summary = AsBf16(pool.get());
    a.kv.num_kv_heads = 1;
    a.kv.head_dim = 32;
    a.page_table = table.get();
    a.num_keys = keys.get();
    EXPECT_EQ(GemvQkvRopeBf16Cuda(AsBf16(dw.get()), AsBf16(dx.get()), 64, a, nullptr).code(),
              absl::StatusCode::kInvalidArgument);
  }
  p.rows = 1;
  GemvOptions legacy, split8, cuda_cores;
  legacy.legacy = true;
  split8.k_split = 8;
  cuda_cores.cuda_cores = true;
  for (const GemvOptions& o : {legacy, split8}) {
    EXPECT_EQ(GemvQkvRopeBf16Cuda(AsBf16(dw.get()), AsBf16(dx.get()), 64, p, nullptr, o).code(),
              absl::StatusCode::kInvalidArgument);
  }
  p.rows = 2;
  EXPECT_EQ(
      GemvQkvRopeBf16Cuda(AsBf16(dw.get()), AsBf16(dx.get()), 64, p, nullptr, cuda_cores).code(),
      absl::StatusCode::kInvalidArgument);
}

// The residual epilogue of o_proj / down (the real shapes, fp32 and bf16 x, a small shape; 1,
// 3 and 8 rows, every plan): h is bit for bit h + the plain GEMV's y with the same plan, g bit
// for bit bf16(h * next_w), and each row's block sums of h^2 bit for bit its block's output rows'
// squares added in row order (8 / k_split rows a block at one row, 16 x 8 / k_split on the
// tensor cores); within fp32 rounding of the CPU twin. Bad arguments are refused.
TEST_F(CudaOpsTest, GemvResidualAddsIntoTheResidualAndWritesTheNormInput) {
  struct Shape {
    int n, k;
    bool fp32_x;
  };
  for (const Shape s : {Shape{1536, 1536, true}, Shape{1536, 8960, false}, Shape{3584, 3584, true},
                        Shape{3584, 18944, false}, Shape{64, 128, false}}) {
    const std::vector<float> w = Noise(size_t(s.n) * s.k, 81, 0.05f);
    const std::vector<float> x = Noise(size_t(kGemvMaxRows) * s.k, 82);
    const std::vector<float> h0 = Noise(size_t(kGemvMaxRows) * s.n, 83, 4.0f);
    std::vector<float> nw = Noise(size_t(s.n), 84, 0.1f);
    for (float& v : nw) v += 1.0f;
    const size_t out = size_t(kGemvMaxRows) * s.n;
    DeviceBuffer<uint16_t> dw(testing::ToBf16(w)), dxb(testing::ToBf16(x)), dg(out);
    DeviceBuffer<float> dxf(x), dh(out), dnw(nw), dy(out), dsq(out);
    for (const int rows : {1, 3, 8}) {
      std::vector<GemvOptions> plans = PairEpiloguePlans(rows);
      if (rows == 1) {
        for (int u : {2, 4, 8}) plans.push_back(GemvOptions{false, 8, u, false});
      }
      const std::vector<float> h_in(h0.begin(), h0.begin() + int64_t(rows) * s.n);
      for (const GemvOptions& o : plans) {
        const std::string where =
            "n " + std::to_string(s.n) + " k " + std::to_string(s.k) + " rows " +
            std::to_string(rows) + " split " + std::to_string(o.k_split) + " loads " +
            std::to_string(o.loads_per_lane) + " order " + std::to_string(o.k_order);
        dh.Upload(h_in);
        dg.Fill(0xff);
        dy.Fill(0xff);
        dsq.Fill(0xff);
        const absl::Status st =
            s.fp32_x ? GemvResidualBf16Cuda(AsBf16(dw.get()), dxf.get(), rows, s.n, s.k, dh.get(),
                                            dnw.get(), AsBf16(dg.get()), dsq.get(), nullptr, o)
                     : GemvResidualBf16Cuda(AsBf16(dw.get()), AsBf16(dxb.get()), rows, s.n, s.k,
                                            dh.get(), dnw.get(), AsBf16(dg.get()), dsq.get(),
                                            nullptr, o);
        ASSERT_TRUE(st.ok()) << st << " " << where;
        ASSERT_TRUE((s.fp32_x ? GemvBf16Cuda(AsBf16(dw.get()), dxf.get(), rows, s.n, s.k, dy.get(),
                                             nullptr, o)
                              : GemvBf16Cuda(AsBf16(dw.get()), AsBf16(dxb.get()), rows, s.n, s.k,
                                             dy.get(), nullptr, o))
                        .ok());
        const std::vector<float> h = dh.Download(), y = dy.Download(),
                                 g = Bf16ToFloat(dg.Download());
        for (size_t i = 0; i < h_in.size(); ++i) {
          const float want_h = h_in[i] + y[i];
          ASSERT_EQ(h[i], want_h) << where << " element " << i;
          ASSERT_EQ(g[i], ref::RoundBf16(want_h * nw[i % size_t(s.n)]))
              << where << " element " << i;
        }
        const GemvPlan plan = PlanGemv(rows, s.n, s.k, o);
        const int count = GemvResidualSquares(rows, s.n, s.k, o);
        const int per_block = (plan.tensor_cores ? 16 : 1) * (8 / plan.k_split);
        ASSERT_EQ(count, (s.n + per_block - 1) / per_block) << where;
        const std::vector<float> sq = dsq.Download();
        for (int m = 0; m < rows; ++m) {
          for (int b = 0; b < count; ++b) {
            float want = 0.0f;
            for (int j = b * per_block; j < std::min(s.n, (b + 1) * per_block); ++j) {
              // volatile: the host compiler must not contract the add into an FMA.
              const volatile float square = h[size_t(m) * s.n + j] * h[size_t(m) * s.n + j];
              want += square;
            }
            ASSERT_EQ(sq[size_t(m) * count + b], want) << where << " row " << m << " block " << b;
          }
        }
      }
      std::vector<float> h = h_in, g(h_in.size());
      for (int m = 0; m < rows; ++m) {
        ref::GemvResidual(w.data(), x.data() + size_t(m) * s.k, s.n, s.k,
                          h.data() + size_t(m) * s.n, nw.data(), g.data() + size_t(m) * s.n);
      }
      std::vector<float> got_h = dh.Download(), got_g = Bf16ToFloat(dg.Download());
      got_h.resize(h.size());
      got_g.resize(g.size());
      EXPECT_TRUE(AllClose(got_h.data(), h.data(), h.size(), kF32Sum))
          << "n " << s.n << " rows " << rows;
      // g: a bf16 step of h * next_w, plus h's fp32-sum error where h nearly cancels.
      EXPECT_TRUE(AllClose(got_g.data(), g.data(), g.size(), Tolerance{1e-4, 8e-3}))
          << "n " << s.n << " rows " << rows;
    }
  }
  DeviceBuffer<uint16_t> dw(size_t(64) * 64), dx(64), dg(64);
  DeviceBuffer<float> dh(64), dnw(64), dsq(64);
  const __nv_bfloat16 *w = AsBf16(dw.get()), *x = AsBf16(dx.get());
  __nv_bfloat16* g = AsBf16(dg.get());
  EXPECT_EQ(
      GemvResidualBf16Cuda(w, x, 1, 64, 60, dh.get(), dnw.get(), g, dsq.get(), nullptr).code(),
      absl::StatusCode::kInvalidArgument);  // k % 8 != 0
  EXPECT_EQ(GemvResidualBf16Cuda(w, x, 1, 64, 64, dh.get(), dnw.get(), nullptr, dsq.get(), nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);  // no g
  EXPECT_EQ(GemvResidualBf16Cuda(w, x, 1, 64, 64, dh.get(), dnw.get(), g, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);  // no squares
  for (int rows : {0, kGemvMaxRows + 1}) {
    EXPECT_EQ(
        GemvResidualBf16Cuda(w, x, rows, 64, 64, dh.get(), dnw.get(), g, dsq.get(), nullptr).code(),
        absl::StatusCode::kInvalidArgument);
  }
  GemvOptions legacy, cuda_cores;
  legacy.legacy = true;
  cuda_cores.cuda_cores = true;
  EXPECT_EQ(
      GemvResidualBf16Cuda(w, x, 1, 64, 64, dh.get(), dnw.get(), g, dsq.get(), nullptr, legacy)
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      GemvResidualBf16Cuda(w, x, 2, 64, 32, dh.get(), dnw.get(), g, dsq.get(), nullptr, cuda_cores)
          .code(),
      absl::StatusCode::kInvalidArgument);
}

// gate_up and qkv reading a RowNorm input (g = bf16(h * w_norm), row m's sums scaled by
// 1 / rms(h_m), each row's sum(h^2) given as 37 block sums), at 1 and 3 rows: on every plan,
// repeatable bit for bit and within a bf16 step of the CPU twins of that contract (Gemv of g,
// scaled by RowRmsInv in fp64, then SiluMul / QkvRope), and within 1% relative L2 of the
// unfused path (AddRmsNormCuda, then the GEMV of its x: the roundings differ, 0.4% measured on
// such rows). A RowNorm with more block sums than kRowNormMaxSquares over its rows is refused.
TEST_F(CudaOpsTest, RowNormInputsScaleTheSumsByTheRowRms) {
  constexpr Tolerance kTwin{1e-4, 8e-3};
  constexpr double kUnfusedRelL2 = 1e-2;
  constexpr float kEps = 1e-6f;
  constexpr int kBlocks = 37;
  auto rel_l2 = [](const std::vector<float>& a, const std::vector<float>& b) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < a.size(); ++i) {
      num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
      den += double(b[i]) * b[i];
    }
    return std::sqrt(num / std::max(den, 1e-30));
  };
  for (const int k : {1536, 3584, 128}) {
    for (const int rows : {1, 3}) {
      std::vector<float> h = Noise(size_t(rows) * k, 91 + rows, 6.0f);
      for (int m = 0; m < rows; ++m) {
        h[size_t(m) * k + 7 + m] = 40.0f / float(m + 1);  // an outlier channel a row
      }
      std::vector<float> nw = Noise(size_t(k), 92, 0.2f);
      for (float& v : nw) v += 1.0f;
      std::vector<float> g(h.size()), sq(size_t(rows) * kBlocks, 0.0f);
      std::vector<double> inv(static_cast<size_t>(rows));
      for (int m = 0; m < rows; ++m) {
        const float* hm = h.data() + size_t(m) * k;
        inv[size_t(m)] = ref::RowRmsInv(hm, k, kEps);
        for (int i = 0; i < k; ++i) {
          g[size_t(m) * k + i] = ref::RoundBf16(hm[i] * nw[size_t(i)]);
          sq[size_t(m) * kBlocks + size_t(i % kBlocks)] += hm[i] * hm[i];
        }
      }
      DeviceBuffer<float> dsq(sq), dnw(nw), dh2(h);
      DeviceBuffer<uint16_t> dg(testing::ToBf16(g)), dx(h.size());
      ASSERT_TRUE(
          AddRmsNormCuda(dh2.get(), nullptr, dnw.get(), rows, k, kEps, AsBf16(dx.get()), nullptr)
              .ok());
      const RowNorm norm{dsq.get(), kBlocks, k, kEps};
      // SwiGLU.
      {
        const int inter = k == 128 ? 96 : k == 1536 ? 8960 : 18944;
        const size_t na = size_t(rows) * inter;
        const std::vector<float> w = Noise(size_t(2 * inter) * k, 93, 0.05f);
        DeviceBuffer<uint16_t> dw(testing::ToBf16(w)), dact(na), dact2(na), dref(na);
        ASSERT_TRUE(GemvSwiGluBf16Cuda(AsBf16(dw.get()), AsBf16(dx.get()), rows, inter, k,
                                       AsBf16(dref.get()), nullptr)
                        .ok());
        std::vector<float> act(na);
        for (int m = 0; m < rows; ++m) {
          std::vector<float> gu(size_t(2 * inter));
          ref::Gemv(w.data(), g.data() + size_t(m) * k, 1, 2 * inter, k, gu.data());
          for (float& v : gu) v = float(v * inv[size_t(m)]);
          ref::SiluMul(gu.data(), 1, inter, act.data() + size_t(m) * inter);
        }
        for (const GemvOptions& o : PairEpiloguePlans(rows)) {
          const std::string where = "k " + std::to_string(k) + " rows " + std::to_string(rows) +
                                    " split " + std::to_string(o.k_split) + " loads " +
                                    std::to_string(o.loads_per_lane) + " order " +
                                    std::to_string(o.k_order);
          dact.Fill(0xff);
          dact2.Fill(0xff);
          for (auto* out : {&dact, &dact2}) {
            ASSERT_TRUE(GemvSwiGluBf16Cuda(AsBf16(dw.get()), AsBf16(dg.get()), rows, inter, k,
                                           AsBf16(out->get()), nullptr, o, norm)
                            .ok());
          }
          ASSERT_EQ(dact.Download(), dact2.Download()) << where;
          const std::vector<float> got = Bf16ToFloat(dact.Download());
          EXPECT_TRUE(AllClose(got.data(), act.data(), act.size(), kTwin)) << where;
          EXPECT_LE(rel_l2(got, Bf16ToFloat(dref.Download())), kUnfusedRelL2) << where;
        }
        RowNorm many = norm;
        many.count = kRowNormMaxSquares / rows + 1;
        EXPECT_EQ(GemvSwiGluBf16Cuda(AsBf16(dw.get()), AsBf16(dg.get()), rows, inter, k,
                                     AsBf16(dact.get()), nullptr, GemvOptions{}, many)
                      .code(),
                  absl::StatusCode::kInvalidArgument);
      }
      // QKV with bias and RoPE.
      {
        const int heads = k == 3584   ? 28
                          : k == 1536 ? 12
                                      : 2,
                  kv_heads = k == 3584 ? 4 : 2, d = k == 128 ? 32 : 128;
        const int n = (heads + 2 * kv_heads) * d;
        const std::vector<float> w = Noise(size_t(n) * k, 94, 0.05f);
        const std::vector<float> bias = Noise(size_t(n), 95, 0.5f);
        std::vector<int32_t> pos;
        for (int m = 0; m < rows; ++m) pos.push_back(262143 - 1001 * m);
        DeviceBuffer<uint16_t> dw(testing::ToBf16(w));
        DeviceBuffer<float> dbias(bias), dqkv(size_t(rows) * n);
        DeviceBuffer<int32_t> dpos(pos);
        const size_t nq = size_t(rows) * heads * d, nk = size_t(rows) * kv_heads * d;
        DeviceBuffer<uint16_t> q1(nq), k1(nk), v1(nk), q2(nq), k2(nk), v2(nk), q3(nq), k3(nk),
            v3(nk);
        auto params = [&](DeviceBuffer<uint16_t>& q, DeviceBuffer<uint16_t>& kk,
                          DeviceBuffer<uint16_t>& v) {
          return QkvRopeFor(rows, heads, kv_heads, d, dqkv.get(), dbias.get(), dpos.get(), q, kk,
                            v);
        };
        ASSERT_TRUE(
            GemvQkvRopeBf16Cuda(AsBf16(dw.get()), AsBf16(dx.get()), k, params(q3, k3, v3), nullptr)
                .ok());
        std::vector<float> qkv(size_t(rows) * n), q(nq), kr(nk), v(nk);
        for (int m = 0; m < rows; ++m) {
          float* row = qkv.data() + size_t(m) * n;
          ref::Gemv(w.data(), g.data() + size_t(m) * k, 1, n, k, row);
          for (int j = 0; j < n; ++j) row[j] = float(row[j] * inv[size_t(m)]);
        }
        ref::QkvRope(qkv.data(), bias.data(), pos.data(), rows, heads, kv_heads, d, 1e6f, q.data(),
                     kr.data(), v.data());
        for (const GemvOptions& o : PairEpiloguePlans(rows)) {
          for (auto* b : {&q1, &k1, &v1, &q2, &k2, &v2}) b->Fill(0xff);
          ASSERT_TRUE(GemvQkvRopeBf16Cuda(AsBf16(dw.get()), AsBf16(dg.get()), k, params(q1, k1, v1),
                                          nullptr, o, norm)
                          .ok());
          ASSERT_TRUE(GemvQkvRopeBf16Cuda(AsBf16(dw.get()), AsBf16(dg.get()), k, params(q2, k2, v2),
                                          nullptr, o, norm)
                          .ok());
          const std::string where = "k " + std::to_string(k) + " rows " + std::to_string(rows) +
                                    " split " + std::to_string(o.k_split) + " loads " +
                                    std::to_string(o.loads_per_lane) + " order " +
                                    std::to_string(o.k_order);
          ASSERT_EQ(q1.Download(), q2.Download()) << where;
          ASSERT_EQ(k1.Download(), k2.Download()) << where;
          ASSERT_EQ(v1.Download(), v2.Download()) << where;
          for (auto [dev, want, unfused] :
               {std::tuple{&q1, &q, &q3}, std::tuple{&k1, &kr, &k3}, std::tuple{&v1, &v, &v3}}) {
            const std::vector<float> got = Bf16ToFloat(dev->Download());
            EXPECT_TRUE(AllClose(got.data(), want->data(), want->size(), kTwin)) << where;
            EXPECT_LE(rel_l2(got, Bf16ToFloat(unfused->Download())), kUnfusedRelL2) << where;
          }
        }
      }
    }
  }
}

// The QKV GEMV's cache append (QkvRopeParams::kv) leaves the cache, summaries included, bit for
// bit as the GEMV without it followed by WriteKvCuda: a fresh page (slot 0, over a stale
// summary), mid-page and last-slot appends, and a rewrite inside a page with later valid keys.
TEST_F(CudaOpsTest, GemvQkvRopeAppendEqualsWriteKv) {
  struct Case {
    int heads, kv_heads, d, k;
    int32_t pos, num_keys;
  };
  for (const Case cs :
       {Case{12, 2, 128, 1536, 32, 33}, Case{12, 2, 128, 1536, 53, 54},
        Case{28, 4, 128, 3584, 47, 48}, Case{9, 3, 64, 576, 36, 45}, Case{2, 1, 64, 64, 0, 1}}) {
    const int n = (cs.heads + 2 * cs.kv_heads) * cs.d;
    const std::vector<float> w = Noise(size_t(n) * cs.k, 81, 0.05f);
    const std::vector<float> x = Noise(size_t(kGemvMaxRows) * cs.k, 82);
    const std::vector<float> bias = Noise(size_t(n), 83, 0.5f);
    DeviceBuffer<uint16_t> dw(testing::ToBf16(w)), dx(testing::ToBf16(x));
    DeviceBuffer<float> dbias(bias);
    // One row (the batch-1 CUDA-core kernel) and batches (tensor cores), each row a sequence
    // of its own: row r at position pos + 5 r (mod 64) with the case's count of later valid
    // keys, its logical blocks 0..3 on pages 4 r + 4, 4 r + 1, 4 r + 3, 4 r + 2 of a pool whose
    // first and last pages no row uses.
    for (int rows : {1, 3, 8}) {
      const int pages = 4 * rows + 2;
      std::vector<int32_t> pos(static_cast<size_t>(rows)), keys(pos.size()), table, offsets;
      for (int r = 0; r < rows; ++r) {
        pos[size_t(r)] = (cs.pos + 5 * r) % 64;
        keys[size_t(r)] = std::min(64, pos[size_t(r)] + (cs.num_keys - cs.pos));
        for (int32_t pg : {4, 1, 3, 2}) table.push_back(4 * r + pg);
        offsets.push_back(r);
      }
      offsets.push_back(rows);
      DeviceBuffer<int32_t> dpos(pos), dkeys(keys), dtable(table), doff(offsets);
      const size_t page = size_t(cs.kv_heads) * kPageTokens * cs.d;
      const std::vector<uint16_t> k0 = testing::ToBf16(Noise(pages * page, 84)),
                                  v0 = testing::ToBf16(Noise(pages * page, 85)),
                                  s0 = testing::ToBf16(  // device layout (SummaryIndex)
                                      Noise(SummaryPoolElems(pages, cs.kv_heads, cs.d), 86));
      DeviceBuffer<uint16_t> kc1(k0), vc1(v0), sc1(s0), kc2(k0), vc2(v0), sc2(s0);
      DeviceBuffer<uint16_t> q1(size_t(rows) * cs.heads * cs.d),
          k1(size_t(rows) * cs.kv_heads * cs.d), v1(k1.size()), q2(q1.size()), k2(k1.size()),
          v2(k1.size());
      auto params = [&](DeviceBuffer<uint16_t>& q, DeviceBuffer<uint16_t>& k,
                        DeviceBuffer<uint16_t>& v) {
        return QkvRopeFor(rows, cs.heads, cs.kv_heads, cs.d, nullptr, dbias.get(), dpos.get(), q, k,
                          v);
      };
      auto cache = [&](DeviceBuffer<uint16_t>& kc, DeviceBuffer<uint16_t>& vc,
                       DeviceBuffer<uint16_t>& sc) {
        PagedKvCuda kv;
        kv.k = AsBf16(kc.get());
        kv.v = AsBf16(vc.get());
        kv.summary = AsBf16(sc.get());
        kv.num_kv_heads = cs.kv_heads;
        kv.head_dim = cs.d;
        return kv;
      };
      for (const GemvOptions& o : PairEpiloguePlans(rows)) {
        for (auto* b : {&kc1, &kc2}) b->Upload(k0);
        for (auto* b : {&vc1, &vc2}) b->Upload(v0);
        for (auto* b : {&sc1, &sc2}) b->Upload(s0);
        QkvRopeParams fused = params(q1, k1, v1);
        fused.kv = cache(kc1, vc1, sc1);
        fused.page_table = dtable.get();
        fused.page_table_stride = 4;
        fused.num_keys = dkeys.get();
        ASSERT_TRUE(
            GemvQkvRopeBf16Cuda(AsBf16(dw.get()), AsBf16(dx.get()), cs.k, fused, nullptr, o).ok());
        ASSERT_TRUE(GemvQkvRopeBf16Cuda(AsBf16(dw.get()), AsBf16(dx.get()), cs.k,
                                        params(q2, k2, v2), nullptr, o)
                        .ok());
        WriteKvParams wk;
        wk.kv = cache(kc2, vc2, sc2);
        wk.k = AsBf16(k2.get());
        wk.v = AsBf16(v2.get());
        wk.num_seqs = rows;
        wk.token_offsets = doff.get();
        wk.first_pos = dpos.get();
        wk.num_keys = dkeys.get();
        wk.page_tables = dtable.get();
        wk.page_table_stride = 4;
        wk.max_tokens = 1;
        ASSERT_TRUE(WriteKvCuda(wk, nullptr).ok());
        const std::string where =
            "rows " + std::to_string(rows) + " pos " + std::to_string(cs.pos) + " keys " +
            std::to_string(cs.num_keys) + " split " + std::to_string(o.k_split) + " loads " +
            std::to_string(o.loads_per_lane) + " order " + std::to_string(o.k_order);
        ASSERT_EQ(q1.Download(), q2.Download()) << where;
        ASSERT_EQ(k1.Download(), k2.Download()) << where;
        ASSERT_EQ(v1.Download(), v2.Download()) << where;
        ASSERT_EQ(kc1.Download(), kc2.Download()) << where;
        ASSERT_EQ(vc1.Download(), vc2.Download()) << where;
        ASSERT_EQ(sc1.Download(), sc2.Download()) << where;
        ASSERT_NE(kc1.Download(), k0) << where;  // the append did write
      }
    }
  }
  // Refused: an append without its arrays or with a cache of another shape, and QkvRopeCuda's.
  DeviceBuffer<uint16_t> dw(size_t(128) * 64), dx(64), dq(64), dk(32), dv(32), dc(16 * 32 * 4);
  DeviceBuffer<int32_t> dpos(1);
  QkvRopeParams p = QkvRopeFor(1, 2, 1, 32, nullptr, nullptr, dpos.get(), dq, dk, dv);
  p.kv.k = p.kv.v = p.kv.summary = AsBf16(dc.get());
  p.kv.num_kv_heads = 1;
  p.kv.head_dim = 32;
  EXPECT_EQ(GemvQkvRopeBf16Cuda(AsBf16(dw.get()), AsBf16(dx.get()), 64, p, nullptr).code(),
            absl::StatusCode::kInvalidArgument);  // no page_table / num_keys
  p.page_table = p.num_keys = dpos.get();
  p.kv.head_dim = 64;
  EXPECT_EQ(GemvQkvRopeBf16Cuda(AsBf16(dw.get()), AsBf16(dx.get()), 64, p, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  p.kv.head_dim = 32;
  p.rows = 2;  // rows > 1 without page_table_stride
  EXPECT_EQ(GemvQkvRopeBf16Cuda(AsBf16(dw.get()), AsBf16(dx.get()), 64, p, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  p.rows = 1;
  DeviceBuffer<float> dqkv(128);
  p.qkv = dqkv.get();
  EXPECT_EQ(QkvRopeCuda(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

// The arg-max in the one-row GEMV's epilogue (the lm_head of a greedy batch-1 step): y bit for
// bit the plain GEMV's with the same plan, and the key's id the CPU twin's arg-max of that y
// (sampler.h ArgMax): the largest value, ties to the lower id, NaN never winning, a row of NaN
// id 0; a key already in the slot above every element's is kept. Real lm_head widths and small
// ones, automatic and explicit plans.
TEST_F(CudaOpsTest, GemvArgMaxTakesTheGreedyIdOfItsOutput) {
  struct Shape {
    int n, k;
  };
  std::vector<GemvOptions> plans(1);  // automatic
  for (int split : {1, 2, 4, 8}) {
    for (int u : {2, 4, 8}) plans.push_back(GemvOptions{false, split, u, false});
  }
  DeviceBuffer<uint64_t> slot(1);
  auto run = [&](const DeviceBuffer<uint16_t>& dw, const DeviceBuffer<uint16_t>& dx, int n, int k,
                 DeviceBuffer<float>& dy, const GemvOptions& o) -> int32_t {
    slot.Upload({0});
    EXPECT_TRUE(GemvArgMaxBf16Cuda(AsBf16(dw.get()), AsBf16(dx.get()), n, k, dy.get(), slot.get(),
                                   nullptr, o)
                    .ok());
    return ArgMaxKeyId(slot.Download()[0]);
  };
  for (const Shape s : {Shape{151936, 128}, Shape{152064, 64}, Shape{5000, 1536}, Shape{17, 64},
                        Shape{1000, 3584}}) {
    std::vector<float> w = Noise(size_t(s.n) * s.k, 71, 0.05f);
    const std::vector<float> x = Noise(size_t(s.k), 72);
    // Two equal rows above all others (a tie: the lower id wins), the lower in a later block
    // than row 0 of the grid, and a NaN row (never wins).
    const int lo = s.n / 2 + 1, hi = s.n - 1, nan_row = s.n > 3 ? s.n / 3 : 0;
    for (int i = 0; i < s.k; ++i) {
      const float v = x[size_t(i)] >= 0.0f ? 0.5f : -0.5f;
      w[size_t(lo) * s.k + i] = v;
      w[size_t(hi) * s.k + i] = v;
    }
    std::vector<uint16_t> wb = testing::ToBf16(w);
    if (nan_row != lo && nan_row != hi) wb[size_t(nan_row) * s.k + 3] = 0x7fc0;
    DeviceBuffer<uint16_t> dw(wb), dx(testing::ToBf16(x));
    DeviceBuffer<float> dy(size_t(s.n)), dy2(size_t(s.n));
    for (const GemvOptions& o : plans) {
      dy.Fill(0xff);
      const int32_t id = run(dw, dx, s.n, s.k, dy, o);
      ASSERT_TRUE(
          GemvBf16Cuda(AsBf16(dw.get()), AsBf16(dx.get()), 1, s.n, s.k, dy2.get(), nullptr, o)
              .ok());
      const std::vector<float> y = dy.Download();
      std::vector<uint32_t> a(y.size()), b(y.size());
      std::memcpy(a.data(), y.data(), a.size() * 4);
      std::memcpy(b.data(), dy2.Download().data(), b.size() * 4);
      ASSERT_EQ(a, b) << "n " << s.n << " k " << s.k << " split " << o.k_split << " loads "
                      << o.loads_per_lane;
      EXPECT_EQ(id, ArgMax(y.data(), s.n)) << "n " << s.n << " split " << o.k_split;
      EXPECT_EQ(id, lo) << "n " << s.n << " split " << o.k_split;
      if (s.n > 3) {
        EXPECT_TRUE(std::isnan(y[size_t(nan_row)]));
      }
    }
    // A row of NaN: id 0, as the twin.
    DeviceBuffer<uint16_t> dnan(std::vector<uint16_t>(size_t(s.k), 0x7fc0));
    EXPECT_EQ(run(dw, dnan, s.n, s.k, dy, GemvOptions{}), 0);
    EXPECT_EQ(ArgMax(dy.Download().data(), s.n), 0);
    // A slot that already holds a larger key keeps it.
    slot.Upload({~uint64_t(0) - 5});
    ASSERT_TRUE(GemvArgMaxBf16Cuda(AsBf16(dw.get()), AsBf16(dx.get()), s.n, s.k, dy.get(),
                                   slot.get(), nullptr)
                    .ok());
    EXPECT_EQ(slot.Download()[0], ~uint64_t(0) - 5);
  }
  // Refused: a bad shape, an unaligned or missing slot, the legacy kernel.
  DeviceBuffer<uint16_t> dw(size_t(64) * 64), dx(64);
  DeviceBuffer<float> dy(64);
  DeviceBuffer<uint64_t> two(2);
  GemvOptions legacy;
  legacy.legacy = true;
  const __nv_bfloat16 *w = AsBf16(dw.get()), *x = AsBf16(dx.get());
  EXPECT_EQ(GemvArgMaxBf16Cuda(w, x, 64, 60, dy.get(), slot.get(), nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GemvArgMaxBf16Cuda(w, x, 64, 64, dy.get(), nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  uint64_t* unaligned = reinterpret_cast<uint64_t*>(reinterpret_cast<char*>(two.get()) + 4);
  EXPECT_EQ(GemvArgMaxBf16Cuda(w, x, 64, 64, dy.get(), unaligned, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GemvArgMaxBf16Cuda(w, x, 64, 64, dy.get(), slot.get(), nullptr, legacy).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace resa::cuda
