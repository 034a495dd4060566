#include "parallel/process_grid.h"

#include <set>
#include <string>

#include "gtest/gtest.h"
#include "parallel/communicator_factory.h"
#include "parallel/testing/communicator_conformance.h"

namespace resa {
namespace {

std::string Error(int rank, int world, int tp, int sp, int heads, int kv) {
  auto g = ProcessGrid::Create(rank, world, tp, sp, heads, kv);
  EXPECT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(g.status().message());
}

TEST(ProcessGrid, ValidationNamesFlagsAndNumbers) {
  EXPECT_EQ(Error(0, 4, 2, 3, 32, 8),
            "--tp 2 x --sp 3 = 6 ranks, but the world has 4 (mpirun -np / srun -n must equal "
            "tp * sp)");
  // Above the KV-head count, --tp must be a multiple of it that splits each query group evenly.
  EXPECT_EQ(Error(0, 6, 6, 1, 36, 4),
            "--tp 6 does not fit the model's 36 query heads and 4 KV heads: up to 4 ranks split "
            "the KV heads; above, --tp must be a multiple of 4 that splits each group of 9 query "
            "heads evenly");
  EXPECT_NE(Error(0, 4, 4, 1, 6, 2).find("--tp 4 does not fit the model's 6 query heads"),
            std::string::npos);
  EXPECT_NE(Error(0, 12, 12, 1, 32, 8).find("--tp 12 does not fit"), std::string::npos);
  EXPECT_NE(Error(0, 1, 0, 1, 8, 8).find("--tp 0"), std::string::npos);
  EXPECT_NE(Error(0, 1, 1, 0, 8, 8).find("--sp 0"), std::string::npos);
  EXPECT_NE(Error(4, 4, 2, 2, 8, 8).find("world rank 4"), std::string::npos);
  EXPECT_NE(Error(0, 1, 1, 1, 9, 2).find("KV heads must divide"), std::string::npos);
}

// The one head rule (SplitHeads, also the engine's TpShard): whole KV groups per rank, uneven
// when tp does not divide the KV heads; replicated KV heads above the KV-head count.
TEST(ProcessGrid, SplitsHeadsByKvGroup) {
  struct Case {
    int heads, kv, tp, rank;
    HeadSplit want;
  };
  const Case cases[] = {
      // SmolLM2 (9 query / 3 KV heads) at --tp 2: KV heads [0, 1) and [1, 3).
      {9, 3, 2, 0, HeadSplit{0, 3, 0, 1, 1}},
      {9, 3, 2, 1, HeadSplit{3, 6, 1, 2, 1}},
      // 32 / 8 at --tp 3 (used to be refused: 3 divides neither 32 nor 8).
      {32, 8, 3, 1, HeadSplit{8, 12, 2, 3, 1}},
      {32, 8, 3, 2, HeadSplit{20, 12, 5, 3, 1}},
      // R1-Qwen-1.5B (12 / 2) at --tp 4: each KV head on 2 ranks, 3 query heads each.
      {12, 2, 4, 3, HeadSplit{9, 3, 1, 1, 2}},
      {12, 2, 4, 2, HeadSplit{6, 3, 1, 1, 2}},
      // Multi-head attention at --tp 1.
      {16, 16, 1, 0, HeadSplit{0, 16, 0, 16, 1}},
  };
  for (const Case& c : cases) {
    auto split = SplitHeads(c.heads, c.kv, c.rank, c.tp);
    ASSERT_TRUE(split.ok()) << split.status();
    EXPECT_EQ(*split, c.want) << c.heads << "/" << c.kv << " heads, tp " << c.tp << " rank "
                              << c.rank;
    auto grid = ProcessGrid::Create(c.rank, c.tp, c.tp, 1, c.heads, c.kv);
    ASSERT_TRUE(grid.ok()) << grid.status();
    EXPECT_EQ(grid->heads(), c.want);
  }
  // Every rank gets the same verdict (the error does not depend on the rank).
  for (int rank = 0; rank < 6; ++rank) {
    EXPECT_EQ(SplitHeads(36, 4, rank, 6).status(), SplitHeads(36, 4, 0, 6).status());
  }
}

TEST(ProcessGrid, RankArithmeticTpInnermost) {
  for (int rank = 0; rank < 8; ++rank) {
    auto g = ProcessGrid::Create(rank, 8, 2, 4, 8, 4);
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_EQ(g->tp_rank(), rank % 2);
    EXPECT_EQ(g->sp_rank(), rank / 2);
    EXPECT_EQ(g->WorldRankOf(g->tp_rank(), g->sp_rank()), rank);
    EXPECT_EQ(g->local_heads(), 4);
    EXPECT_EQ(g->first_head(), 4 * (rank % 2));
    EXPECT_EQ(g->local_kv_heads(), 2);
    EXPECT_EQ(g->first_kv_head(), 2 * (rank % 2));
    EXPECT_EQ(g->kv_replicas(), 1);
  }
}

// Every query head of a rank must read a KV head that rank holds, for split and replicated KV.
TEST(ProcessGrid, QueryHeadsReadOnlyLocalKvHeads) {
  struct Model {
    int heads, kv;
  };
  for (Model m :
       {Model{9, 3}, Model{32, 8}, Model{28, 4}, Model{12, 2}, Model{8, 1}, Model{16, 16}}) {
    for (int tp = 1; tp <= 16; ++tp) {
      auto probe = ProcessGrid::Create(0, tp, tp, 1, m.heads, m.kv);
      if (!probe.ok()) continue;
      std::set<int> heads;
      std::vector<int> kv_holders(size_t(m.kv), 0);
      for (int rank = 0; rank < tp; ++rank) {
        auto g = ProcessGrid::Create(rank, tp, tp, 1, m.heads, m.kv);
        ASSERT_TRUE(g.ok());
        const int group = m.heads / m.kv;
        for (int j = g->first_head(); j < g->first_head() + g->local_heads(); ++j) {
          heads.insert(j);
          const int kv = j / group;
          EXPECT_GE(kv, g->first_kv_head()) << g->ToString();
          EXPECT_LT(kv, g->first_kv_head() + g->local_kv_heads()) << g->ToString();
        }
        for (int h = g->first_kv_head(); h < g->first_kv_head() + g->local_kv_heads(); ++h) {
          ++kv_holders[size_t(h)];
        }
      }
      EXPECT_EQ(int(heads.size()), m.heads) << "tp " << tp;
      auto g0 = ProcessGrid::Create(0, tp, tp, 1, m.heads, m.kv);
      for (int holders : kv_holders) EXPECT_EQ(holders, g0->kv_replicas()) << "tp " << tp;
    }
  }
}

TEST(ProcessGrid, ToStringShowsPosition) {
  auto g = ProcessGrid::Create(3, 4, 2, 2, 8, 2);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->ToString(), "tp 2 x sp 2, rank 3 = (tp 1, sp 1), heads [4, 8), kv heads [1, 2)");
}

TEST(ProcessGrid, BuildsTpAndSpGroups) {
  for (auto [tp, sp] :
       {std::pair{1, 1}, std::pair{1, 4}, std::pair{4, 1}, std::pair{2, 2}, std::pair{2, 3}}) {
    auto group = CreateFakeGroup(tp * sp, {});
    ASSERT_TRUE(group.ok());
    testing::RunThreads(*group, [tp = tp, sp = sp](Communicator& world) {
      auto grid = ProcessGrid::Create(world.rank(), world.size(), tp, sp, 12, 2);
      ASSERT_TRUE(grid.ok()) << grid.status();
      auto comms = BuildGridCommunicators(*grid, world);
      ASSERT_TRUE(comms.ok()) << comms.status();
      EXPECT_EQ(comms->tp->size(), tp);
      EXPECT_EQ(comms->tp->rank(), grid->tp_rank());
      EXPECT_EQ(comms->tp->name(), "tp");
      EXPECT_EQ(comms->sp->size(), sp);
      EXPECT_EQ(comms->sp->rank(), grid->sp_rank());
      EXPECT_EQ(comms->sp->name(), "sp");
      // The TP group of this rank holds the world ranks of its sp row, in tp order.
      std::vector<int32_t> members(static_cast<size_t>(tp));
      const int32_t me = world.rank();
      ASSERT_TRUE(comms->tp->AllGather(DataType::kInt32, &me, members.data(), 1).ok());
      for (int t = 0; t < tp; ++t)
        EXPECT_EQ(members[size_t(t)], grid->WorldRankOf(t, grid->sp_rank()));
      std::vector<int32_t> column(static_cast<size_t>(sp));
      ASSERT_TRUE(comms->sp->AllGather(DataType::kInt32, &me, column.data(), 1).ok());
      for (int s = 0; s < sp; ++s)
        EXPECT_EQ(column[size_t(s)], grid->WorldRankOf(grid->tp_rank(), s));
    });
  }
}

TEST(ProcessGrid, BuildRejectsAMismatchedWorld) {
  auto group = CreateFakeGroup(1, {});
  ASSERT_TRUE(group.ok());
  auto grid = ProcessGrid::Create(1, 2, 2, 1, 8, 8);
  ASSERT_TRUE(grid.ok());
  EXPECT_EQ(BuildGridCommunicators(*grid, *(*group)[0]).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace resa
