#include "parallel/testing/communicator_conformance.h"

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <string>
#include <thread>
#include <type_traits>

#include "absl/time/clock.h"
#include "parallel/communicator_factory.h"

namespace resa::testing {

namespace {

class HostBuffers final : public TestBuffers {
 public:
  void* Alloc(size_t bytes) override { return std::malloc(bytes); }
  void Free(void* p) override { std::free(p); }
  void CopyIn(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void CopyOut(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
};

constexpr absl::Duration kTimeout = absl::Seconds(20);      // ordinary tests: generous
constexpr absl::Duration kShort = absl::Milliseconds(300);  // timeout tests
// A timeout must surface within its deadline plus this much (polling, scheduling on 2 cores).
constexpr absl::Duration kSlack = absl::Seconds(5);

// Element i of rank r's contribution: small integers, so every sum is exact in every type.
int64_t Value(int rank, size_t i, int salt) {
  return int64_t((i * 7 + size_t(rank) * 3 + size_t(salt)) % 11) - 5;
}

uint16_t Bf16Bits(float f) { return uint16_t(std::bit_cast<uint32_t>(f) >> 16); }  // exact here

// Host representation of element type for each DataType (bf16 as its bits).
template <DataType kType>
struct Host;
template <>
struct Host<DataType::kFloat32> {
  using T = float;
  static T From(int64_t v) { return float(v); }
};
template <>
struct Host<DataType::kBFloat16> {
  using T = uint16_t;
  static T From(int64_t v) { return Bf16Bits(float(v)); }
};
template <>
struct Host<DataType::kInt32> {
  using T = int32_t;
  static T From(int64_t v) { return int32_t(v); }
};
template <>
struct Host<DataType::kInt64> {
  using T = int64_t;
  static T From(int64_t v) { return v * 1000000007LL; }  // exercises the high bits
};
template <>
struct Host<DataType::kUint8> {
  using T = uint8_t;
  static T From(int64_t v) { return uint8_t(v + 5); }  // 0..10, sums of 4 ranks fit
};

template <DataType kType>
std::vector<typename Host<kType>::T> Contribution(int rank, size_t n, int salt) {
  std::vector<typename Host<kType>::T> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = Host<kType>::From(Value(rank, i, salt));
  return v;
}

// The expected reduction, computed like the contributions (integers, then converted).
template <DataType kType>
std::vector<typename Host<kType>::T> Expected(int size, size_t n, int salt, ReduceOp op) {
  std::vector<typename Host<kType>::T> v(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t acc = 0;
    for (int r = 0; r < size; ++r) {
      int64_t x = Value(r, i, salt);
      if constexpr (kType == DataType::kUint8) x += 5;
      if constexpr (kType == DataType::kInt64) x *= 1000000007LL;
      acc = r == 0 ? x : (op == ReduceOp::kSum ? acc + x : std::max(acc, x));
    }
    if constexpr (kType == DataType::kUint8) {
      v[i] = uint8_t(acc);
    } else if constexpr (kType == DataType::kInt64) {
      v[i] = acc;
    } else {
      v[i] = Host<kType>::From(acc);
    }
  }
  return v;
}

template <DataType kType>
void CheckAllReduce(Communicator& comm, TestBuffers& buf, ReduceOp op) {
  for (size_t n : {size_t(1), size_t(3), size_t(17), size_t(1000), size_t(65537)}) {
    TestArray<typename Host<kType>::T> a(buf, n);
    a.Upload(Contribution<kType>(comm.rank(), n, int(n)));
    const absl::Status st = comm.AllReduce(kType, op, a.data(), n);
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_EQ(a.Download(), Expected<kType>(comm.size(), n, int(n), op))
        << DataTypeName(kType) << " x " << n << " " << ReduceOpName(op);
  }
}

}  // namespace

std::unique_ptr<TestBuffers> MakeHostTestBuffers() { return std::make_unique<HostBuffers>(); }

std::string TargetName(const ::testing::TestParamInfo<ConformanceTarget>& info) {
  return info.param.name;
}

std::vector<ConformanceTarget> FakeTargets(int max_ranks) {
  std::vector<ConformanceTarget> out;
  for (int n = 1; n <= max_ranks; ++n) {
    ConformanceTarget t;
    t.name = "fake" + std::to_string(n);
    t.run = [n](absl::Duration timeout, const RankBody& body) {
      CommunicatorOptions options;
      options.timeout = timeout;
      options.name = "test";
      auto group = CreateFakeGroup(n, options);
      ASSERT_TRUE(group.ok()) << group.status();
      auto host = MakeHostTestBuffers();
      RunThreads(*group, [&](Communicator& c) { body(c, *host); });
    };
    out.push_back(std::move(t));
  }
  return out;
}

TEST_P(CommunicatorConformance, RanksAreDistinctAndOrdered) {
  GetParam().run(kTimeout, [](Communicator& comm, TestBuffers& buf) {
    EXPECT_GE(comm.rank(), 0);
    EXPECT_LT(comm.rank(), comm.size());
    TestArray<int32_t> mine(buf, 1), all(buf, size_t(comm.size()));
    mine.Upload({comm.rank()});
    ASSERT_TRUE(comm.AllGather(DataType::kInt32, mine.data(), all.data(), 1).ok());
    std::vector<int32_t> want(size_t(comm.size()));
    for (int r = 0; r < comm.size(); ++r) want[size_t(r)] = r;
    EXPECT_EQ(all.Download(), want);
  });
}

TEST_P(CommunicatorConformance, AllReduceSumIsExact) {
  const bool bf16 = GetParam().bf16_reduce;
  GetParam().run(kTimeout, [bf16](Communicator& comm, TestBuffers& buf) {
    CheckAllReduce<DataType::kFloat32>(comm, buf, ReduceOp::kSum);
    CheckAllReduce<DataType::kInt32>(comm, buf, ReduceOp::kSum);
    CheckAllReduce<DataType::kInt64>(comm, buf, ReduceOp::kSum);
    CheckAllReduce<DataType::kUint8>(comm, buf, ReduceOp::kSum);
    if (bf16) CheckAllReduce<DataType::kBFloat16>(comm, buf, ReduceOp::kSum);
  });
}

TEST_P(CommunicatorConformance, AllReduceMaxIsExact) {
  const bool bf16 = GetParam().bf16_reduce;
  GetParam().run(kTimeout, [bf16](Communicator& comm, TestBuffers& buf) {
    CheckAllReduce<DataType::kFloat32>(comm, buf, ReduceOp::kMax);
    CheckAllReduce<DataType::kInt32>(comm, buf, ReduceOp::kMax);
    CheckAllReduce<DataType::kInt64>(comm, buf, ReduceOp::kMax);
    if (bf16) CheckAllReduce<DataType::kBFloat16>(comm, buf, ReduceOp::kMax);
  });
}

TEST_P(CommunicatorConformance, Bf16ReductionRefusedWhereUnsupported) {
  if (GetParam().bf16_reduce) GTEST_SKIP() << "this backend reduces bf16";
  GetParam().run(kTimeout, [](Communicator& comm, TestBuffers& buf) {
    TestArray<uint16_t> a(buf, 4);
    a.Upload({0, 0, 0, 0});
    const absl::Status st = comm.AllReduce(DataType::kBFloat16, ReduceOp::kSum, a.data(), 4);
    EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented) << st;
  });
}

TEST_P(CommunicatorConformance, AllGatherConcatenatesInRankOrder) {
  GetParam().run(kTimeout, [](Communicator& comm, TestBuffers& buf) {
    for (size_t n : {size_t(1), size_t(5), size_t(4099)}) {
      TestArray<float> send(buf, n), recv(buf, n * size_t(comm.size()));
      send.Upload(Contribution<DataType::kFloat32>(comm.rank(), n, 1));
      ASSERT_TRUE(comm.AllGather(DataType::kFloat32, send.data(), recv.data(), n).ok());
      std::vector<float> want;
      for (int r = 0; r < comm.size(); ++r) {
        auto part = Contribution<DataType::kFloat32>(r, n, 1);
        want.insert(want.end(), part.begin(), part.end());
      }
      EXPECT_EQ(recv.Download(), want) << "count " << n;
    }
  });
}

TEST_P(CommunicatorConformance, BroadcastFromEveryRoot) {
  GetParam().run(kTimeout, [](Communicator& comm, TestBuffers& buf) {
    for (int root = 0; root < comm.size(); ++root) {
      for (size_t n : {size_t(1), size_t(1000)}) {
        TestArray<int64_t> a(buf, n);
        a.Upload(Contribution<DataType::kInt64>(comm.rank(), n, root));
        ASSERT_TRUE(comm.Broadcast(DataType::kInt64, a.data(), n, root).ok());
        EXPECT_EQ(a.Download(), Contribution<DataType::kInt64>(root, n, root)) << "root " << root;
      }
    }
  });
}

TEST_P(CommunicatorConformance, BarrierAndZeroCounts) {
  GetParam().run(kTimeout, [](Communicator& comm, TestBuffers&) {
    for (int i = 0; i < 3; ++i) EXPECT_TRUE(comm.Barrier().ok());
    EXPECT_TRUE(comm.AllReduce(DataType::kFloat32, ReduceOp::kSum, nullptr, 0).ok());
    EXPECT_TRUE(comm.AllGather(DataType::kInt32, nullptr, nullptr, 0).ok());
    EXPECT_TRUE(comm.Broadcast(DataType::kUint8, nullptr, 0, 0).ok());
  });
}

TEST_P(CommunicatorConformance, SendRecvRing) {
  GetParam().run(kTimeout, [](Communicator& comm, TestBuffers& buf) {
    if (comm.size() < 2) GTEST_SKIP() << "needs two ranks";
    const int next = (comm.rank() + 1) % comm.size();
    const int prev = (comm.rank() + comm.size() - 1) % comm.size();
    const size_t n = 10007;
    TestArray<float> send(buf, n), recv(buf, n);
    send.Upload(Contribution<DataType::kFloat32>(comm.rank(), n, 2));
    const absl::Status st =
        comm.SendRecv(DataType::kFloat32, send.data(), n, next, recv.data(), n, prev);
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_EQ(recv.Download(), Contribution<DataType::kFloat32>(prev, n, 2));
  });
}

TEST_P(CommunicatorConformance, SendThenRecvPairs) {
  GetParam().run(kTimeout, [](Communicator& comm, TestBuffers& buf) {
    if (comm.size() < 2) GTEST_SKIP() << "needs two ranks";
    const int r = comm.rank();
    const int peer = r % 2 == 0 ? r + 1 : r - 1;
    if (peer >= comm.size()) return;  // odd size: the last rank sits out
    const size_t n = 100003;          // large enough for a rendezvous protocol
    TestArray<int32_t> out(buf, n), in(buf, n);
    out.Upload(Contribution<DataType::kInt32>(r, n, 3));
    for (int turn = 0; turn < 2; ++turn) {
      if ((r % 2 == 0) == (turn == 0)) {
        const absl::Status st = comm.Send(DataType::kInt32, out.data(), n, peer);
        ASSERT_TRUE(st.ok()) << st;
      } else {
        const absl::Status st = comm.Recv(DataType::kInt32, in.data(), n, peer);
        ASSERT_TRUE(st.ok()) << st;
        EXPECT_EQ(in.Download(), Contribution<DataType::kInt32>(peer, n, 3));
      }
    }
  });
}

TEST_P(CommunicatorConformance, SplitRanksByKeyAndReducesWithinGroup) {
  GetParam().run(kTimeout, [](Communicator& comm, TestBuffers& buf) {
    const int color = comm.rank() % 2;
    auto sub = comm.Split(color, -comm.rank(), "half");  // reversed order within each color
    ASSERT_TRUE(sub.ok()) << sub.status();
    Communicator& s = **sub;
    EXPECT_EQ(s.name(), "half");
    EXPECT_EQ(s.world_rank(), comm.world_rank());
    std::vector<int> members;
    for (int r = comm.size() - 1; r >= 0; --r) {
      if (r % 2 == color) members.push_back(r);
    }
    ASSERT_EQ(s.size(), int(members.size()));
    EXPECT_EQ(members[size_t(s.rank())], comm.rank());
    TestArray<int32_t> a(buf, 1);
    a.Upload({comm.rank() + 1});
    ASSERT_TRUE(s.AllReduce(DataType::kInt32, ReduceOp::kSum, a.data(), 1).ok());
    int32_t want = 0;
    for (int m : members) want += m + 1;
    EXPECT_EQ(a.Download(), std::vector<int32_t>{want});
    // Nested: every rank alone.
    auto single = s.Split(s.rank(), 0);
    ASSERT_TRUE(single.ok()) << single.status();
    EXPECT_EQ((*single)->size(), 1);
    EXPECT_EQ((*single)->name(), "half/" + std::to_string(s.rank()));
    EXPECT_TRUE((*single)->AllReduce(DataType::kInt32, ReduceOp::kSum, a.data(), 1).ok());
    EXPECT_EQ(a.Download(), std::vector<int32_t>{want});
  });
}

TEST_P(CommunicatorConformance, BadArgumentsFailFastAndLeaveItUsable) {
  GetParam().run(kTimeout, [](Communicator& comm, TestBuffers& buf) {
    TestArray<float> a(buf, 2);
    a.Upload({1.0f, 2.0f});
    absl::Status st = comm.Broadcast(DataType::kFloat32, a.data(), 2, comm.size());
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("Broadcast"), std::string::npos) << st;
    EXPECT_NE(st.message().find("rank " + std::to_string(comm.rank())), std::string::npos) << st;
    st = comm.Send(DataType::kFloat32, a.data(), 2, comm.rank());
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    st = comm.AllReduce(DataType::kFloat32, ReduceOp::kSum, nullptr, 2);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_EQ(comm.Split(-1, 0).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(comm.health().ok());
    st = comm.AllReduce(DataType::kFloat32, ReduceOp::kSum, a.data(), 2);
    EXPECT_TRUE(st.ok()) << st;
    EXPECT_EQ(a.Download(), (std::vector<float>{float(comm.size()), 2.0f * float(comm.size())}));
  });
}

// Rank 0 skips a collective: the others fail with DeadlineExceeded soon after the timeout, the
// communicator is broken afterwards, and rank 0's late call still finds valid data (MPI, fake).
TEST_P(CommunicatorConformance, SkippedCollectiveTimesOut) {
  const bool late_completes = GetParam().late_peer_completes;
  GetParam().run(kTimeout, [late_completes](Communicator& comm, TestBuffers& buf) {
    if (comm.size() < 2) GTEST_SKIP() << "needs two ranks";
    auto sub_or = comm.Split(0, comm.rank(), "victim");
    ASSERT_TRUE(sub_or.ok()) << sub_or.status();
    Communicator& sub = **sub_or;
    sub.set_timeout(kShort);
    TestArray<int32_t> a(buf, 3);
    a.Upload({comm.rank() + 1, 1, 2});
    if (comm.rank() != 0) {
      const absl::Time start = absl::Now();
      absl::Status st = sub.AllReduce(DataType::kInt32, ReduceOp::kSum, a.data(), 3);
      const absl::Duration took = absl::Now() - start;
      EXPECT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded) << st;
      EXPECT_GE(took, kShort);
      EXPECT_LT(took, kShort + kSlack);
      EXPECT_NE(st.message().find("AllReduce"), std::string::npos) << st;
      EXPECT_NE(st.message().find("rank " + std::to_string(sub.rank()) + "/"), std::string::npos)
          << st;
      EXPECT_NE(st.message().find("'victim'"), std::string::npos) << st;
      st = sub.Barrier();
      EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
      EXPECT_NE(st.message().find("earlier failure"), std::string::npos) << st;
      EXPECT_FALSE(sub.health().ok());
    }
    ASSERT_TRUE(comm.Barrier().ok());  // everyone has timed out
    if (comm.rank() == 0) {
      const absl::Status st = sub.AllReduce(DataType::kInt32, ReduceOp::kSum, a.data(), 3);
      if (late_completes) {
        ASSERT_TRUE(st.ok()) << st;
        const int n = comm.size();
        EXPECT_EQ(a.Download(), (std::vector<int32_t>{n * (n + 1) / 2, n, 2 * n}));
      } else {
        EXPECT_FALSE(st.ok());
      }
    }
    EXPECT_TRUE(comm.Barrier().ok());  // the parent is unaffected
  });
}

TEST_P(CommunicatorConformance, RecvFromSilentPeerTimesOut) {
  GetParam().run(kTimeout, [](Communicator& comm, TestBuffers& buf) {
    if (comm.size() < 2) GTEST_SKIP() << "needs two ranks";
    auto sub_or = comm.Split(0, comm.rank(), "silent");
    ASSERT_TRUE(sub_or.ok()) << sub_or.status();
    Communicator& sub = **sub_or;
    sub.set_timeout(kShort);
    if (sub.rank() == 1) {
      TestArray<float> a(buf, 8);
      const absl::Time start = absl::Now();
      const absl::Status st = sub.Recv(DataType::kFloat32, a.data(), 8, 0);
      EXPECT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded) << st;
      EXPECT_LT(absl::Now() - start, kShort + kSlack);
      EXPECT_NE(st.message().find("Recv"), std::string::npos) << st;
      EXPECT_NE(st.message().find("from rank 0"), std::string::npos) << st;
    }
    EXPECT_TRUE(comm.Barrier().ok());
  });
}

}  // namespace resa::testing
