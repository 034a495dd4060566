// Process grid and sequence-parallel primitives over MPI processes: the same per-rank checks as
// parallel/sp_attention_test.cc, with the world as the SP group.
#include <utility>

#include "gtest/gtest.h"
#include "parallel/process_grid.h"
#include "parallel/testing/sp_checks.h"
#include "tests/mpi/mpi_world.h"

namespace resa::testing {
namespace {

std::unique_ptr<Communicator> Fresh() {
  auto sub = MpiWorld().Split(0, MpiWorld().rank(), "sp");
  EXPECT_TRUE(sub.ok()) << sub.status();
  return sub.ok() ? std::move(sub).value() : nullptr;
}

TEST(MpiSp, DistributedSelectionEqualsTopBlocks) {
  auto sp = Fresh();
  ASSERT_NE(sp, nullptr);
  CheckDistributedSelection(*sp, 21);
}

TEST(MpiSp, ShardedDenseAttentionEqualsWhole) {
  auto sp = Fresh();
  ASSERT_NE(sp, nullptr);
  CheckShardedDenseAttention(*sp, 22);
}

TEST(MpiSp, ShardedSparseStepEqualsSingleRank) {
  auto sp = Fresh();
  ASSERT_NE(sp, nullptr);
  CheckShardedSparseStep(*sp, 23);
}

// Every (tp, sp) factorisation of the world: the groups have the right members, and the SP
// checks pass inside each SP group while the TP groups reduce independently.
TEST(MpiGrid, EveryFactorisationBuildsWorkingGroups) {
  Communicator& world = MpiWorld();
  for (int tp = 1; tp <= world.size(); ++tp) {
    if (world.size() % tp != 0) continue;
    const int sp = world.size() / tp;
    auto grid = ProcessGrid::Create(world.rank(), world.size(), tp, sp, 24, 12);
    ASSERT_TRUE(grid.ok()) << grid.status();
    auto comms = BuildGridCommunicators(*grid, world);
    ASSERT_TRUE(comms.ok()) << comms.status();
    ASSERT_EQ(comms->tp->size(), tp);
    ASSERT_EQ(comms->sp->size(), sp);
    int32_t sum = world.rank();
    ASSERT_TRUE(comms->tp->AllReduce(DataType::kInt32, ReduceOp::kSum, &sum, 1).ok());
    int32_t want = 0;
    for (int t = 0; t < tp; ++t) want += grid->WorldRankOf(t, grid->sp_rank());
    EXPECT_EQ(sum, want) << grid->ToString();
    CheckShardedSparseStep(*comms->sp, 24 + uint32_t(tp));
  }
}

}  // namespace
}  // namespace resa::testing
