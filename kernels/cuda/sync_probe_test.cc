// The sync probe (sync_probe.h): every mechanism's values after the chain equal the C++ twin's,
// so a boundary or barrier that let a phase read before the previous one wrote would show.
// (2 x 132 blocks on the H200 is a multiple of 8: every barrier kind runs in the timed test.)
#include "kernels/cuda/sync_probe.h"

#include <cstdint>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/cuda_test_util.h"

namespace resa::cuda {
namespace {

TEST(SyncProbeReferenceTest, EachPhaseReadsTheNextBlock) {
  // After n phases block b holds ((b + n) % blocks) + n.
  for (int blocks : {1, 5, 64}) {
    for (int phases : {1, 2, 7, 130}) {
      const std::vector<int32_t> v = SyncProbeReference(blocks, phases);
      ASSERT_EQ(v.size(), size_t(blocks));
      for (int b = 0; b < blocks; ++b) {
        EXPECT_EQ(v[size_t(b)], (b + phases) % blocks + phases) << blocks << " " << phases;
      }
    }
  }
}

TEST(SyncProbeReferenceTest, BadParametersAreRefused) {
  for (const SyncProbeParams& p : {SyncProbeParams{0, 256, 4, 0}, SyncProbeParams{8, 256, 0, 0},
                                   SyncProbeParams{8, 48, 4, 0}, SyncProbeParams{8, 256, 4, -1}}) {
    EXPECT_EQ(RunSyncProbe(p).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

class SyncProbeTest : public testing::CudaTest,
                      public ::testing::WithParamInterface<std::tuple<int, int>> {};

TEST_P(SyncProbeTest, EveryMechanismMatchesTheTwin) {
  const auto [blocks_per_sm, phases] = GetParam();
  const int blocks = blocks_per_sm == 0 ? 7 : blocks_per_sm * MultiprocessorCount();
  auto res = RunSyncProbe({blocks, 256, phases, 0});
  ASSERT_TRUE(res.ok()) << res.status();
  const std::vector<int32_t> want = SyncProbeReference(blocks, phases);
  EXPECT_EQ(res->chain, want);
  EXPECT_EQ(res->chain_plain, want);
  for (int k = 0; k < kGridBarrierKinds; ++k) {
    const auto& b = res->barriers[k];
    const char* name = GridBarrierName(GridBarrierKind(k));
    if (GridBarrierKind(k) == GridBarrierKind::kCluster && blocks % 8 != 0) {
      EXPECT_TRUE(b.skipped) << name;
      continue;
    }
    ASSERT_FALSE(b.skipped) << name << ": " << blocks << " blocks of 256 threads not all resident";
    EXPECT_EQ(b.values, want) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, SyncProbeTest,
                         ::testing::Combine(::testing::Values(0, 1, 2, 4),
                                            ::testing::Values(1, 2, 33)));

TEST_F(SyncProbeTest, TimedRunsReportTimes) {
  auto res = RunSyncProbe({2 * MultiprocessorCount(), 256, 64, 2});
  ASSERT_TRUE(res.ok()) << res.status();
  EXPECT_GT(res->chain_us, 0.0);
  EXPECT_GT(res->chain_plain_us, 0.0);
  for (int k = 0; k < kGridBarrierKinds; ++k) {
    const auto& b = res->barriers[k];
    ASSERT_FALSE(b.skipped) << GridBarrierName(GridBarrierKind(k));
    EXPECT_GT(b.us, 0.0) << GridBarrierName(GridBarrierKind(k));
    EXPECT_EQ(b.values, SyncProbeReference(2 * MultiprocessorCount(), 64));
  }
}

}  // namespace
}  // namespace resa::cuda
