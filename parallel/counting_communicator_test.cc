// CountingCommunicator: the conformance suite over counting wrappers of the fake (the decorator
// must not change behaviour), and exact counts of calls and bytes for known traffic.
#include "parallel/counting_communicator.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "parallel/communicator_factory.h"
#include "parallel/testing/communicator_conformance.h"

namespace resa::testing {
namespace {

std::vector<std::unique_ptr<Communicator>> CountingGroup(int n, absl::Duration timeout) {
  CommunicatorOptions options;
  options.timeout = timeout;
  options.name = "test";
  auto group = CreateFakeGroup(n, options);
  EXPECT_TRUE(group.ok()) << group.status();
  std::vector<std::unique_ptr<Communicator>> out;
  for (auto& c : *group) out.push_back(CountingCommunicator::Wrap(std::move(c)));
  return out;
}

std::vector<ConformanceTarget> CountingTargets(int max_ranks) {
  std::vector<ConformanceTarget> out;
  for (int n = 1; n <= max_ranks; ++n) {
    ConformanceTarget t;
    t.name = "counting_fake" + std::to_string(n);
    t.run = [n](absl::Duration timeout, const RankBody& body) {
      auto group = CountingGroup(n, timeout);
      auto host = MakeHostTestBuffers();
      RunThreads(group, [&](Communicator& c) { body(c, *host); });
    };
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace

INSTANTIATE_TEST_SUITE_P(Counting, CommunicatorConformance,
                         ::testing::ValuesIn(CountingTargets(3)), TargetName);

namespace {

TEST(CountingCommunicator, CountsCallsAndBytesPerOperationAndType) {
  auto group = CountingGroup(3, absl::Seconds(10));
  RunThreads(group, [](Communicator& comm) {
    auto& c = static_cast<CountingCommunicator&>(comm);
    std::vector<float> f(10, 1.0f);
    ASSERT_TRUE(c.AllReduce(std::span<float>(f)).ok());
    ASSERT_TRUE(c.AllReduce(std::span<float>(f)).ok());
    std::vector<int32_t> mine(5, c.rank()), all(15);
    ASSERT_TRUE(c.AllGather(std::span<const int32_t>(mine), std::span<int32_t>(all)).ok());
    ASSERT_TRUE(c.Broadcast(std::span<int32_t>(mine), 1).ok());
    ASSERT_TRUE(c.Barrier().ok());
    EXPECT_EQ(f[0], 9.0f);  // forwarded: 1 * 3 * 3
    EXPECT_EQ(all[14], 2);

    const CommOpStats ar = c.counts().at({CommOp::kAllReduce, DataType::kFloat32});
    EXPECT_EQ(ar.calls, 2);
    EXPECT_EQ(ar.payload_bytes, 80u);
    EXPECT_EQ(ar.ring_bytes, 2u * (2 * 40 * 2 / 3));  // 2 (S-1)/S per call, integer bytes
    EXPECT_GE(ar.seconds, 0.0);
    const CommOpStats ag = c.counts().at({CommOp::kAllGather, DataType::kInt32});
    EXPECT_EQ(ag.calls, 1);
    EXPECT_EQ(ag.payload_bytes, 20u);
    EXPECT_EQ(ag.ring_bytes, 40u);  // (S-1) x payload
    const CommOpStats bc = c.counts().at({CommOp::kBroadcast, DataType::kInt32});
    EXPECT_EQ(bc.payload_bytes, c.rank() == 1 ? 20u : 0u);
    EXPECT_EQ(bc.ring_bytes, c.rank() == 0 ? 0u : 20u);  // rank 0 ends the ring from root 1
    EXPECT_EQ(c.Total(CommOp::kBarrier).calls, 1);
    EXPECT_EQ(c.counts().size(), 4u);

    // Children count on their own; the parent's counts are unchanged by them.
    auto child = c.Split(c.rank() % 2, c.rank(), "half");
    ASSERT_TRUE(child.ok()) << child.status();
    auto* cc = dynamic_cast<CountingCommunicator*>(child->get());
    ASSERT_NE(cc, nullptr);
    ASSERT_TRUE(cc->AllReduce(std::span<float>(f)).ok());
    EXPECT_EQ(cc->Total(CommOp::kAllReduce).calls, 1);
    EXPECT_EQ(c.Total(CommOp::kAllReduce).calls, 2);
    c.ResetCounts();
    EXPECT_TRUE(c.counts().empty());
  });
}

// Errors read as the wrapped backend's, annotated once; a failure breaks the wrapped one too.
TEST(CountingCommunicator, TimeoutsKeepTheWordingAndBreakBoth) {
  auto group = CountingGroup(2, absl::Seconds(10));
  RunThreads(group, [](Communicator& comm) {
    auto& c = static_cast<CountingCommunicator&>(comm);
    c.set_timeout(absl::Milliseconds(200));
    if (c.rank() == 1) return;  // skips the collective
    int32_t x = 1;
    const absl::Status st = c.AllReduce(DataType::kInt32, ReduceOp::kSum, &x, 1);
    ASSERT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded) << st;
    const std::string msg(st.message());
    EXPECT_EQ(msg.rfind("fake 'test' rank 0/2 (world rank 0) on host ", 0), 0u) << msg;
    EXPECT_EQ(msg.find("rank 0/2", msg.find("rank 0/2") + 1), std::string::npos)
        << "annotated twice: " << msg;
    EXPECT_NE(msg.find("AllReduce(int32 x 1, sum)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("200ms"), std::string::npos) << "timeout not forwarded: " << msg;
    EXPECT_EQ(c.health().code(), absl::StatusCode::kUnavailable);
    EXPECT_EQ(c.inner().health().code(), absl::StatusCode::kUnavailable);
    EXPECT_EQ(c.Total(CommOp::kAllReduce).calls, 1);
  });
}

}  // namespace
}  // namespace resa::testing
