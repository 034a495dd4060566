// SP primitives over the fake communicator with S = 1..4 ranks in threads (tests/mpi runs the
// same checks over MPI processes).
#include "parallel/sp_attention.h"

#include <cstring>
#include <limits>

#include "gtest/gtest.h"
#include "kernels/cpu/selection.h"
#include "parallel/communicator_factory.h"
#include "parallel/counting_communicator.h"
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

// The first exchange sends k = FirstRoundCandidates(n, S) candidates per row and decides when
// the top-n is spread over the ranks; a top-n concentrated on one rank needs the second, full
// exchange. Both equal TopBlocks; the counting wrapper shows how many exchanges and bytes.
TEST(SpAttention, SelectionExchangeShrinksAndFallsBackExactly) {
  constexpr int kRanks = 4;
  constexpr int32_t kBlocks = 1000, kN = 200;
  const int32_t k = FirstRoundCandidates(kN, kRanks);
  EXPECT_EQ(k, 50 + 29 + 4);  // ceil(200 / 4 + 2 sqrt(200) + 4)
  EXPECT_EQ(FirstRoundCandidates(kN, 1), kN);
  EXPECT_EQ(FirstRoundCandidates(16, 2), 16);  // nothing to save at n_min
  for (bool skewed : {false, true}) {
    // Distinct scores; skewed: the best 250 blocks all live on rank 2 (block % 4 == 2).
    std::vector<float> scores(kBlocks);
    for (int32_t b = 0; b < kBlocks; ++b) {
      scores[size_t(b)] = float((b * 7919) % kBlocks);
      if (skewed && b % kRanks == 2) scores[size_t(b)] += 2.0f * kBlocks;
    }
    std::vector<int32_t> want(kN);
    TopBlocks(scores.data(), 1, kBlocks, kN, want.data());
    auto group = CreateFakeGroup(kRanks, {});
    ASSERT_TRUE(group.ok());
    std::vector<std::unique_ptr<Communicator>> comms;
    for (auto& c : *group) comms.push_back(CountingCommunicator::Wrap(std::move(c)));
    testing::RunThreads(comms, [&](Communicator& comm) {
      const SequenceShard shard{comm.rank(), kRanks};
      const std::vector<int32_t> owned = OwnedBlocks(shard, kBlocks);
      std::vector<float> local;
      for (int32_t b : owned) local.push_back(scores[size_t(b)]);
      std::vector<int32_t> got(kN, -1);
      ASSERT_TRUE(SelectBlocksAcrossRanks(comm, local.data(), owned, 1, kN, got.data()).ok());
      EXPECT_EQ(got, want) << (skewed ? "skewed" : "spread");
      const CommOpStats ag = static_cast<CountingCommunicator&>(comm).Total(CommOp::kAllGather);
      const uint64_t first_round = (1 + 2 + 2 * uint64_t(k)) * 4;
      const uint64_t full_round = (1 + 2 + 2 * uint64_t(kN)) * 4;
      EXPECT_EQ(ag.calls, skewed ? 2 : 1);
      EXPECT_EQ(ag.payload_bytes, skewed ? first_round + full_round : first_round);
    });
  }
}

// A batch mixing a reduced row (n = 200, spread) with a row whose k is already n (n = 16, all of
// its top-16 on one rank): the second row is decided by any exchange (the union of local top-n
// always covers the top-n), so the batch takes one exchange.
TEST(SpAttention, RowsWithKEqualToNNeverForceTheSecondExchange) {
  constexpr int kRanks = 4;
  constexpr int32_t kBlocks = 1000;
  ASSERT_EQ(FirstRoundCandidates(16, kRanks), 16);
  std::vector<float> spread(kBlocks), skewed(kBlocks);
  for (int32_t b = 0; b < kBlocks; ++b) {
    spread[size_t(b)] = float((b * 7919) % kBlocks);
    skewed[size_t(b)] = spread[size_t(b)] + (b % kRanks == 1 ? 2.0f * kBlocks : 0.0f);
  }
  std::vector<int32_t> want_a(200), want_b(16);
  TopBlocks(spread.data(), 1, kBlocks, 200, want_a.data());
  TopBlocks(skewed.data(), 1, kBlocks, 16, want_b.data());
  auto group = CreateFakeGroup(kRanks, {});
  ASSERT_TRUE(group.ok());
  std::vector<std::unique_ptr<Communicator>> comms;
  for (auto& c : *group) comms.push_back(CountingCommunicator::Wrap(std::move(c)));
  testing::RunThreads(comms, [&](Communicator& comm) {
    const std::vector<int32_t> owned = OwnedBlocks(SequenceShard{comm.rank(), kRanks}, kBlocks);
    std::vector<float> a, b;
    for (int32_t blk : owned) {
      a.push_back(spread[size_t(blk)]);
      b.push_back(skewed[size_t(blk)]);
    }
    std::vector<int32_t> got_a(200), got_b(16);
    const int32_t local = int32_t(owned.size());
    const SelectionRow rows[] = {{a.data(), owned.data(), local, 200, got_a.data()},
                                 {b.data(), owned.data(), local, 16, got_b.data()}};
    ASSERT_TRUE(SelectBlocksAcrossRanks(comm, rows).ok());
    EXPECT_EQ(got_a, want_a);
    EXPECT_EQ(got_b, want_b);
    EXPECT_EQ(static_cast<CountingCommunicator&>(comm).Total(CommOp::kAllGather).calls, 1);
  });
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
