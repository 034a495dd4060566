// SkinnyGemm (linear layers of 9-64 rows on Hopper) against the fp64 CPU twin (ref::Gemv, and
// ref::SiluMul for the SwiGLU output): every output, shapes that are not multiples of its tiles
// (n, k) or of its MMA width (rows), tiles split between CTAs in every way a small grid makes,
// results repeated bit for bit and inside a CUDA graph, and bad arguments.
#include "runtime/engine/cuda/skinny_gemm.h"

#include <cstring>
#include <tuple>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/cuda_test_util.h"
#include "kernels/testing/tolerance.h"
#include "runtime/engine/cuda/model_ops_ref.h"

namespace resa::cuda {
namespace {

using ::resa::testing::AllClose;
using ::resa::testing::Tolerance;
using testing::AsBf16;
using testing::DeviceBuffer;

constexpr Tolerance kF32Sum{1e-4, 1e-3};   // fp32 accumulation vs fp64
constexpr Tolerance kBf16Sum{1e-4, 5e-3};  // ... rounded to bf16 once
// silu(gate) * up from fp32 sums vs the same from fp64 sums, both rounded to bf16: one bf16 ulp.
constexpr Tolerance kBf16Act{1e-4, 8e-3};

std::unique_ptr<SkinnyGemm> MakeOrSkip(std::string* why) {
  auto g = SkinnyGemm::Create();
  if (!g.ok()) {
    *why = std::string(g.status().message());
    return nullptr;
  }
  return std::move(*g);
}

#define SKINNY_OR_SKIP(g)                            \
  std::string why_;                                  \
  std::unique_ptr<SkinnyGemm> g = MakeOrSkip(&why_); \
  if (g == nullptr) GTEST_SKIP() << "no Hopper device for SkinnyGemm: " << why_

class SkinnyGemmCaseTest : public testing::CudaTest {};

// (rows, n, k, max_ctas)
class SkinnyGemmTest : public testing::CudaTest,
                       public ::testing::WithParamInterface<std::tuple<int, int, int, int>> {};

TEST_P(SkinnyGemmTest, MatchesFp64) {
  const auto [rows, n, k, max_ctas] = GetParam();
  SKINNY_OR_SKIP(gemm);
  const std::vector<float> w = testing::RandomBf16Values(size_t(n) * k, 31, 0.05f),
                           x = testing::RandomBf16Values(size_t(rows) * k, 32, 1.0f);
  DeviceBuffer<uint16_t> dw(testing::ToBf16(w)), dx(testing::ToBf16(x));
  std::vector<float> want(size_t(rows) * n);
  ref::Gemv(w.data(), x.data(), rows, n, k, want.data());

  SkinnyGemmParams p;
  p.x = AsBf16(dx.get());
  p.w = AsBf16(dw.get());
  p.rows = rows, p.n = n, p.k = k, p.max_ctas = max_ctas;
  DeviceBuffer<float> dy(size_t(rows) * n);
  dy.Fill(0xff);
  p.y = dy.get();
  ASSERT_TRUE(gemm->Run(p, nullptr).ok());
  const std::vector<float> got = dy.Download();
  EXPECT_TRUE(AllClose(got.data(), want.data(), want.size(), kF32Sum));

  // Again: bit for bit (the split tiles' sums are added in CTA order).
  DeviceBuffer<float> dy2(size_t(rows) * n);
  p.y = dy2.get();
  ASSERT_TRUE(gemm->Run(p, nullptr).ok());
  const std::vector<float> again = dy2.Download();
  EXPECT_EQ(std::memcmp(got.data(), again.data(), got.size() * sizeof(float)), 0);

  // The other unit shapes (k slices a unit, weight rows a tile): other splits, the same sums to
  // rounding.
  for (auto [k_sub, tile_rows] : {std::pair{2, 64}, std::pair{2, 128}, std::pair{4, 128}}) {
    p.k_sub = k_sub, p.tile_rows = tile_rows;
    ASSERT_TRUE(gemm->Run(p, nullptr).ok());
    const std::vector<float> other = dy2.Download();
    EXPECT_TRUE(AllClose(other.data(), want.data(), want.size(), kF32Sum))
        << "k_sub " << k_sub << ", tile rows " << tile_rows;
  }
  p.k_sub = 0, p.tile_rows = 0;

  // bf16 out: the fp32 result rounded once.
  DeviceBuffer<uint16_t> d16(size_t(rows) * n);
  d16.Fill(0xff);
  p.y = nullptr;
  p.y_bf16 = AsBf16(d16.get());
  ASSERT_TRUE(gemm->Run(p, nullptr).ok());
  const std::vector<uint16_t> got16 = d16.Download();
  size_t rounding_diff = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    rounding_diff += got16[i] != testing::ToBf16(got[i]);
  }
  EXPECT_EQ(rounding_diff, 0u) << "bf16 outputs that are not the fp32 output rounded";

  // SwiGLU (n / 2 a multiple of 64): act = bf16(silu(gate) * up) from the same sums.
  if ((n / 2) % 64 == 0 && n % 2 == 0) {
    const int inter = n / 2;
    std::vector<float> want_act(size_t(rows) * inter);
    ref::SiluMul(want.data(), rows, inter, want_act.data());
    DeviceBuffer<uint16_t> dact(size_t(rows) * inter);
    dact.Fill(0xff);
    p.y_bf16 = nullptr;
    p.act = AsBf16(dact.get());
    ASSERT_TRUE(gemm->Run(p, nullptr).ok());
    const std::vector<uint16_t> act16 = dact.Download();
    std::vector<float> act(act16.size());
    for (size_t i = 0; i < act.size(); ++i) act[i] = testing::FromBf16(act16[i]);
    EXPECT_TRUE(AllClose(act.data(), want_act.data(), want_act.size(), kBf16Act));
    p.k_sub = 2;  // units of two k slices instead of four
    ASSERT_TRUE(gemm->Run(p, nullptr).ok());
    const std::vector<uint16_t> act16b = dact.Download();
    for (size_t i = 0; i < act.size(); ++i) act[i] = testing::FromBf16(act16b[i]);
    EXPECT_TRUE(AllClose(act.data(), want_act.data(), want_act.size(), kBf16Act)) << "k_sub 2";
  }
}

// Rows around the MMA widths (32, 64); n below, at and past the 128-row tile (and the SwiGLU's
// 64-row halves); k below, at and past the 64-wide step; grids of one CTA, a few (a tile's k
// steps over several CTAs) and one per multiprocessor.
INSTANTIATE_TEST_SUITE_P(Shapes, SkinnyGemmTest,
                         ::testing::Combine(::testing::Values(1, 9, 32, 33, 64),
                                            ::testing::Values(40, 128, 200, 2048),
                                            ::testing::Values(8, 72, 1536),
                                            ::testing::Values(0, 1, 5)));
// The real shapes of a batch-1 rectification pass (1.5B: qkv, o, gate_up, down).
INSTANTIATE_TEST_SUITE_P(ModelShapes, SkinnyGemmTest,
                         ::testing::Values(std::make_tuple(32, 2048, 1536, 0),
                                           std::make_tuple(32, 17920, 1536, 0),
                                           std::make_tuple(32, 1536, 8960, 0),
                                           std::make_tuple(17, 1536, 8960, 23)));

// One tile whose 24 k steps are spread over 2-24 CTAs: the owner adds every later CTA's part.
TEST_F(SkinnyGemmCaseTest, SkinnyGemmOneTileOverManyCtas) {
  SKINNY_OR_SKIP(gemm);
  const int rows = 20, n = 128, k = 1536;
  const std::vector<float> w = testing::RandomBf16Values(size_t(n) * k, 41, 0.05f),
                           x = testing::RandomBf16Values(size_t(rows) * k, 42, 1.0f);
  DeviceBuffer<uint16_t> dw(testing::ToBf16(w)), dx(testing::ToBf16(x));
  std::vector<float> want(size_t(rows) * n);
  ref::Gemv(w.data(), x.data(), rows, n, k, want.data());
  for (int ctas : {2, 3, 7, 13, 24}) {
    DeviceBuffer<float> dy(size_t(rows) * n);
    dy.Fill(0xff);
    SkinnyGemmParams p;
    p.x = AsBf16(dx.get());
    p.w = AsBf16(dw.get());
    p.rows = rows, p.n = n, p.k = k, p.max_ctas = ctas, p.y = dy.get();
    ASSERT_TRUE(gemm->Run(p, nullptr).ok());
    const std::vector<float> got = dy.Download();
    EXPECT_TRUE(AllClose(got.data(), want.data(), want.size(), kF32Sum)) << ctas << " CTAs";
  }
}

// Captured in a CUDA graph and replayed: the eager call's bits (the flags are left at zero).
TEST_F(SkinnyGemmCaseTest, SkinnyGemmReplaysInAGraph) {
  SKINNY_OR_SKIP(gemm);
  const int rows = 32, n = 896, k = 1544;
  DeviceBuffer<uint16_t> dw(testing::ToBf16(testing::RandomBf16Values(size_t(n) * k, 5, 0.05f))),
      dx(testing::ToBf16(testing::RandomBf16Values(size_t(rows) * k, 6, 1.0f)));
  DeviceBuffer<float> y1(size_t(rows) * n), y2(size_t(rows) * n);
  SkinnyGemmParams p;
  p.x = AsBf16(dx.get());
  p.w = AsBf16(dw.get());
  p.rows = rows, p.n = n, p.k = k, p.y = y1.get();
  ASSERT_TRUE(gemm->Run(p, nullptr).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  p.y = y2.get();
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  const absl::Status captured = gemm->Run(p, s);
  ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  ASSERT_TRUE(captured.ok()) << captured;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  for (int r = 0; r < 3; ++r) ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(s);
  const std::vector<float> a = y1.Download(), b = y2.Download();
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

TEST_F(SkinnyGemmCaseTest, SkinnyGemmRejectsBadArguments) {
  SKINNY_OR_SKIP(gemm);
  DeviceBuffer<uint16_t> d(size_t(65) * 256);
  DeviceBuffer<float> y(size_t(65) * 256);
  const __nv_bfloat16* b = AsBf16(d.get());
  auto run = [&](int rows, int n, int k, bool swiglu, const __nv_bfloat16* x, int outputs) {
    SkinnyGemmParams p;
    p.x = x;
    p.w = b;
    p.rows = rows, p.n = n, p.k = k;
    if (swiglu) {
      p.act = AsBf16(d.get());
    } else if (outputs > 0) {
      p.y = y.get();
    }
    if (outputs > 1) p.y_bf16 = AsBf16(d.get());
    return gemm->Run(p, nullptr).code();
  };
  const auto kBad = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(run(65, 64, 64, false, b, 1), kBad);  // too many rows
  EXPECT_EQ(run(0, 64, 64, false, b, 1), kBad);   // none
  EXPECT_EQ(run(8, 64, 12, false, b, 1), kBad);   // k not a multiple of 8
  EXPECT_EQ(run(8, 200, 64, true, b, 1), kBad);   // SwiGLU halves not multiples of 64
  EXPECT_EQ(run(8, 64, 64, false, b, 0), kBad);   // no output
  EXPECT_EQ(run(8, 64, 64, false, b, 2), kBad);   // two
  EXPECT_EQ(run(8, 64, 64, false, nullptr, 1), kBad);
  EXPECT_EQ(run(8, 64, 64, false, b + 1, 1), kBad);  // x not 16-byte aligned
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

}  // namespace
}  // namespace resa::cuda
