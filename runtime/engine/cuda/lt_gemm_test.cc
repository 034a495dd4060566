// LtGemm (the backend's GEMM for linear layers of many rows) against the fp64 reference, over
// shapes that are not multiples of cuBLAS's tiles and operands that are not 16-byte aligned.
#include "runtime/engine/cuda/lt_gemm.h"

#include <cstring>
#include <tuple>
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

// fp32 accumulation of bf16 products vs an fp64 reference.
constexpr Tolerance kF32Sum{1e-4, 1e-3};
// ... and that sum rounded to bf16 (half an ulp: 2^-9 relative).
constexpr Tolerance kBf16Sum{1e-4, 5e-3};

class LtGemmCaseTest : public testing::CudaTest {};

// (rows, n, k, element offset of x and w: 0 keeps cudaMalloc's 256-byte alignment, 1 leaves 2)
class LtGemmTest : public testing::CudaTest,
                   public ::testing::WithParamInterface<std::tuple<int, int, int, int>> {};

TEST_P(LtGemmTest, MatchesFp64) {
  const auto [rows, n, k, offset] = GetParam();
  const std::vector<float> w = testing::RandomBf16Values(size_t(n) * k, 21, 0.05f),
                           x = testing::RandomBf16Values(size_t(rows) * k, 22, 1.0f);
  std::vector<uint16_t> wb(size_t(offset), 0), xb(size_t(offset), 0);
  const std::vector<uint16_t> w16 = testing::ToBf16(w), x16 = testing::ToBf16(x);
  wb.insert(wb.end(), w16.begin(), w16.end());
  xb.insert(xb.end(), x16.begin(), x16.end());
  DeviceBuffer<uint16_t> dw(wb), dx(xb);
  DeviceBuffer<float> dy(size_t(rows) * n + size_t(offset));
  dy.Fill(0xff);
  auto gemm = LtGemm::Create(size_t(4) << 20);
  ASSERT_TRUE(gemm.ok()) << gemm.status();
  float* y = dy.get() + offset;
  ASSERT_TRUE(
      (*gemm)
          ->Linear(AsBf16(dx.get()) + offset, AsBf16(dw.get()) + offset, rows, n, k, y, nullptr)
          .ok());
  std::vector<float> got = dy.Download(), want(size_t(rows) * n);
  ref::Gemv(w.data(), x.data(), rows, n, k, want.data());
  EXPECT_TRUE(AllClose(got.data() + offset, want.data(), want.size(), kF32Sum));

  // bf16 out: the reference within its rounding.
  DeviceBuffer<uint16_t> dy16(size_t(rows) * n + size_t(offset));
  dy16.Fill(0xff);
  ASSERT_TRUE((*gemm)
                  ->Linear(AsBf16(dx.get()) + offset, AsBf16(dw.get()) + offset, rows, n, k,
                           AsBf16(dy16.get()) + offset, nullptr)
                  .ok());
  const std::vector<uint16_t> got16 = dy16.Download();
  std::vector<float> got16f(want.size());
  for (size_t i = 0; i < want.size(); ++i) got16f[i] = testing::FromBf16(got16[offset + i]);
  EXPECT_TRUE(AllClose(got16f.data(), want.data(), want.size(), kBf16Sum));
}

INSTANTIATE_TEST_SUITE_P(Shapes, LtGemmTest,
                         ::testing::Combine(::testing::Values(1, 9, 33, 300),
                                            ::testing::Values(7, 129, 1536),
                                            ::testing::Values(8, 13, 1544),
                                            ::testing::Values(0, 1)));

// A shape runs one cached plan: the second call is bitwise the first, eager or replayed from a
// CUDA graph (the workspace is fixed), and adds no plan.
TEST_F(LtGemmCaseTest, RepeatsAndCapturesInAGraph) {
  const int rows = 64, n = 896, k = 1536;
  DeviceBuffer<uint16_t> dw(testing::ToBf16(testing::RandomBf16Values(size_t(n) * k, 3, 0.05f))),
      dx(testing::ToBf16(testing::RandomBf16Values(size_t(rows) * k, 4, 1.0f)));
  DeviceBuffer<float> y1(size_t(rows) * n), y2(size_t(rows) * n), y3(size_t(rows) * n);
  auto gemm = LtGemm::Create(size_t(32) << 20);
  ASSERT_TRUE(gemm.ok()) << gemm.status();
  LtGemm& g = **gemm;
  ASSERT_TRUE(g.Linear(AsBf16(dx.get()), AsBf16(dw.get()), rows, n, k, y1.get(), nullptr).ok());
  EXPECT_EQ(g.cached_plans(), 1u);
  ASSERT_TRUE(g.Linear(AsBf16(dx.get()), AsBf16(dw.get()), rows, n, k, y2.get(), nullptr).ok());
  EXPECT_EQ(g.cached_plans(), 1u);

  // The calls above share the workspace with the graph's; s does not wait for the legacy stream.
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  const absl::Status captured =
      g.Linear(AsBf16(dx.get()), AsBf16(dw.get()), rows, n, k, y3.get(), s);
  ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  ASSERT_TRUE(captured.ok()) << captured;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(s);

  const std::vector<float> a = y1.Download(), b = y2.Download(), c = y3.Download();
  size_t repeat_diff = 0, graph_diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    repeat_diff += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
    graph_diff += std::memcmp(&a[i], &c[i], sizeof(float)) != 0;
  }
  EXPECT_EQ(repeat_diff, 0u) << "of " << a.size() << " outputs";
  EXPECT_EQ(graph_diff, 0u) << "of " << a.size() << " outputs";
}

TEST_F(LtGemmCaseTest, RejectsBadShapes) {
  auto gemm = LtGemm::Create(0);
  ASSERT_TRUE(gemm.ok()) << gemm.status();
  DeviceBuffer<uint16_t> d(64);
  DeviceBuffer<float> y(64);
  const __nv_bfloat16* p = AsBf16(d.get());
  EXPECT_EQ((*gemm)->Linear(p, p, 0, 8, 8, y.get(), nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*gemm)->Linear(p, p, 2, -1, 8, y.get(), nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*gemm)->Linear(nullptr, p, 2, 8, 8, y.get(), nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*gemm)->cached_plans(), 0u);
}

}  // namespace
}  // namespace resa::cuda
