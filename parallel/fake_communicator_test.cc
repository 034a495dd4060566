// The conformance suite over the fake with 1..4 ranks, plus what only the fake can check.
#include "parallel/fake_communicator.h"

#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "parallel/communicator_factory.h"
#include "parallel/testing/communicator_conformance.h"

namespace resa::testing {

INSTANTIATE_TEST_SUITE_P(Fake, CommunicatorConformance, ::testing::ValuesIn(FakeTargets(4)),
                         TargetName);

namespace {

std::vector<std::unique_ptr<Communicator>> Group(int n, absl::Duration timeout) {
  CommunicatorOptions options;
  options.timeout = timeout;
  auto group = CreateFakeGroup(n, options);
  EXPECT_TRUE(group.ok()) << group.status();
  return std::move(group).value();
}

TEST(FakeCommunicator, RejectsBadGroups) {
  EXPECT_EQ(CreateFakeGroup(0).status().code(), absl::StatusCode::kInvalidArgument);
  CommunicatorOptions options;
  options.timeout = absl::ZeroDuration();
  EXPECT_EQ(CreateFakeGroup(2, options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(FakeCommunicator, DescribesItself) {
  auto comms = Group(2, absl::Seconds(5));
  EXPECT_EQ(comms[1]->backend(), "fake");
  EXPECT_EQ(comms[1]->Describe().rfind("fake 'world' rank 1/2 (world rank 1) on host ", 0), 0u)
      << comms[1]->Describe();
}

TEST(FakeCommunicator, MismatchedCollectivesFailOnEveryRank) {
  auto comms = Group(2, absl::Seconds(5));
  RunThreads(comms, [](Communicator& c) {
    float data[5] = {};
    const absl::Status st =
        c.AllReduce(DataType::kFloat32, ReduceOp::kSum, data, c.rank() == 0 ? 4 : 5);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_NE(st.message().find("collective mismatch"), std::string::npos) << st;
  });
}

TEST(FakeCommunicator, TimeoutNamesTheRanksThatNeverArrived) {
  auto comms = Group(3, absl::Milliseconds(200));
  int32_t x = 1;
  const absl::Status st = comms[1]->AllReduce(DataType::kInt32, ReduceOp::kSum, &x, 1);
  EXPECT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded) << st;
  EXPECT_NE(st.message().find("ranks that never arrived: 0, 2"), std::string::npos) << st;
}

TEST(FakeCommunicator, DestroyedPeerIsUnavailable) {
  auto comms = Group(3, absl::Seconds(30));
  std::thread dying([&] { comms[2].reset(); });
  dying.join();
  int32_t x = 1;
  const absl::Time start = absl::Now();
  RunThreads(comms, [&](Communicator& c) {
    const absl::Status st = c.AllReduce(DataType::kInt32, ReduceOp::kSum, &x, 1);
    EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
    EXPECT_NE(st.message().find("peer rank(s) 2 left the group"), std::string::npos) << st;
  });
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));  // not the 30 s timeout
}

TEST(FakeCommunicator, RecvFromDestroyedPeerIsUnavailable) {
  auto comms = Group(2, absl::Seconds(30));
  comms[0].reset();
  float x = 0;
  const absl::Status st = comms[1]->Recv(DataType::kFloat32, &x, 1, 0);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
}

TEST(FakeCommunicator, RecvSizeMismatchIsReported) {
  auto comms = Group(2, absl::Seconds(5));
  float x[2] = {1, 2};
  ASSERT_TRUE(comms[0]->Send(DataType::kFloat32, x, 2, 1).ok());
  const absl::Status st = comms[1]->Recv(DataType::kFloat32, x, 1, 0);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(st.message().find("sent 8 bytes"), std::string::npos) << st;
}

TEST(FakeCommunicator, FloatSumsAreIdenticalOnEveryRank) {
  auto comms = Group(4, absl::Seconds(5));
  std::vector<std::vector<float>> results(4);
  RunThreads(comms, [&](Communicator& c) {
    std::vector<float> v(64);
    for (size_t i = 0; i < v.size(); ++i) v[i] = 0.1f * float(i + 1) / float(c.rank() + 3);
    ASSERT_TRUE(c.AllReduce(std::span<float>(v)).ok());
    results[size_t(c.rank())] = v;
  });
  for (int r = 1; r < 4; ++r) EXPECT_EQ(results[size_t(r)], results[0]);
}

TEST(CommunicatorFactory, SelfWorldIsOneRank) {
  WorldOptions options;
  options.host = HostBackend::kSelf;
  auto world = CreateWorld(options);
  ASSERT_TRUE(world.ok()) << world.status();
  EXPECT_EQ(world->host->size(), 1);
  EXPECT_EQ(world->local_rank, 0);
  EXPECT_EQ(world->local_size, 1);
  EXPECT_EQ(world->device, nullptr);
}

TEST(CommunicatorFactory, LocalRankCountsRanksOnThisHost) {
  auto comms = Group(3, absl::Seconds(5));
  RunThreads(comms, [](Communicator& c) {
    auto local = ComputeLocalRank(c);
    ASSERT_TRUE(local.ok()) << local.status();
    EXPECT_EQ(local->rank, c.rank());  // one host: local rank = rank
    EXPECT_EQ(local->size, 3);
  });
}

TEST(CommunicatorFactory, MissingBackendsSayHowToGetThem) {
  if (!HaveNcclBackend()) {
    auto comms = Group(1, absl::Seconds(5));
    auto nccl = CreateNcclCommunicator(*comms[0], 0, {});
    EXPECT_EQ(nccl.status().code(), absl::StatusCode::kUnimplemented);
    EXPECT_NE(nccl.status().message().find("RESA_NCCL"), std::string::npos);
  }
  if (!HaveMpiBackend()) {
    WorldOptions options;
    options.host = HostBackend::kMpi;
    EXPECT_EQ(CreateWorld(options).status().code(), absl::StatusCode::kUnimplemented);
  }
}

}  // namespace
}  // namespace resa::testing
