// SP primitives over the fake communicator with S = 1..4 ranks in threads (tests/mpi runs the
// same checks over MPI processes).
#include "parallel/sp_attention.h"

#include <cstring>
#include <limits>

#include "gtest/gtest.h"
#include "parallel/communicator_factory.h"
#include "parallel/testing/communicator_conformance.h"
#include "parallel/testing/sp_checks.h"

namespace resa {
namespace {

class SpOverFake : public ::testing::TestWithParam<int> {
 protected:
  void RunOnAll(const std::function<void(Communicator&)>& body) {
    auto group = CreateFakeGroup(GetParam(), {});
    ASSERT_TRUE(group.ok()) << group.status();
    testing::RunThreads(*group, body);
  }
};

TEST_P(SpOverFake, DistributedSelectionEqualsTopBlocks) {
  RunOnAll([](Communicator& sp) { testing::CheckDistributedSelection(sp, 11); });
}

TEST_P(SpOverFake, ShardedDenseAttentionEqualsWhole) {
  RunOnAll([](Communicator& sp) { testing::CheckShardedDenseAttention(sp, 12); });
}

TEST_P(SpOverFake, ShardedSparseStepEqualsSingleRank) {
  RunOnAll([](Communicator& sp) { testing::CheckShardedSparseStep(sp, 13); });
}

INSTANTIATE_TEST_SUITE_P(S, SpOverFake, ::testing::Values(1, 2, 3, 4),
                         [](const auto& info) { return "S" + std::to_string(info.param); });

TEST(SequenceShard, OwnershipArithmetic) {
  for (int size = 1; size <= 5; ++size) {
    for (int32_t m = 0; m < 23; ++m) {
      int32_t total = 0;
      for (int r = 0; r < size; ++r) {
        const SequenceShard s{r, size};
        const std::vector<int32_t> owned = OwnedBlocks(s, m);
        EXPECT_EQ(int32_t(owned.size()), s.NumLocalBlocks(m));
        for (size_t j = 0; j < owned.size(); ++j) {
          EXPECT_EQ(owned[j] % size, r);
          EXPECT_TRUE(s.Owns(owned[j]));
          EXPECT_EQ(s.Owner(owned[j]), r);
          EXPECT_EQ(s.LocalIndex(owned[j]), int32_t(j));
        }
        total += int32_t(owned.size());
      }
      EXPECT_EQ(total, m);
    }
  }
}

TEST(SequenceShard, ExpandedPageTableAndOwnedSelection) {
  const SequenceShard s{1, 3};
  const int32_t local[] = {40, 41, 42};  // blocks 1, 4, 7
  EXPECT_EQ(ExpandLocalPageTable(s, local, 8),
            (std::vector<int32_t>{-1, 40, -1, -1, 41, -1, -1, 42}));
  // Head 0 selected {0, 1, 4, 5}, head 1 {2, 3, 6, 7}.
  const int32_t sel[] = {0, 1, 4, 5, 2, 3, 6, 7};
  std::vector<int32_t> mine;
  EXPECT_EQ(OwnedSelection(s, sel, 2, 4, 8, &mine), 2);
  EXPECT_EQ(mine, (std::vector<int32_t>{1, 4, 7, 8}));  // head 1 padded with block 8 (masked)
  const SequenceShard none{2, 3};
  const int32_t sel2[] = {0, 1};
  EXPECT_EQ(OwnedSelection(none, sel2, 1, 2, 8, &mine), 0);
  EXPECT_TRUE(mine.empty());
}

TEST(SpAttention, RejectsDeviceCommunicatorsAndBadShapes) {
  auto group = CreateFakeGroup(1, {});
  ASSERT_TRUE(group.ok());
  Communicator& c = *(*group)[0];
  float o[4] = {}, lse[1] = {};
  EXPECT_EQ(MergeAttentionStatesAcrossRanks(c, o, lse, 1, 0).code(),
            absl::StatusCode::kInvalidArgument);
  int32_t out[2];
  const int32_t blocks[] = {0};
  const float scores[] = {1.0f};
  const absl::Status st = SelectBlocksAcrossRanks(c, scores, blocks, 1, 2, out);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(st.message().find("n = 2 but the group holds 1 blocks"), std::string::npos) << st;
}

}  // namespace
}  // namespace resa
