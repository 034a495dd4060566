// One conformance suite for every Communicator implementation (STYLE.md: MSCCL++'s habit).
//
// A test binary compiles communicator_conformance.cc (the TEST_P bodies) and instantiates
//   INSTANTIATE_TEST_SUITE_P(Backend, CommunicatorConformance, ValuesIn(targets), TargetName);
// with its targets: each target knows how to run a per-rank body on every rank of a fresh group
// (threads for the fake, this process's rank under mpirun for MPI, a GPU per rank for NCCL) and
// how to move test data into the buffers that backend takes. All data are small integers, so
// results compare bit for bit.
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "parallel/communicator.h"
#include "parallel/testing/run_threads.h"

namespace resa::testing {

// Memory of the kind a communicator takes (Communicator::buffer_location()).
class TestBuffers {
 public:
  virtual ~TestBuffers() = default;
  virtual void* Alloc(size_t bytes) = 0;
  virtual void Free(void* p) = 0;
  virtual void CopyIn(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void CopyOut(void* host_dst, const void* src, size_t bytes) = 0;
};

// Plain host memory.
std::unique_ptr<TestBuffers> MakeHostTestBuffers();

// n elements of T in a TestBuffers allocation (bf16 is carried as uint16_t).
template <typename T>
class TestArray {
 public:
  TestArray(TestBuffers& buffers, size_t n)
      : buffers_(buffers), n_(n), p_(n > 0 ? buffers.Alloc(n * sizeof(T)) : nullptr) {}
  ~TestArray() {
    if (p_ != nullptr) buffers_.Free(p_);
  }
  TestArray(const TestArray&) = delete;
  TestArray& operator=(const TestArray&) = delete;

  void* data() { return p_; }
  size_t size() const { return n_; }
  void Upload(const std::vector<T>& v) {
    if (n_ > 0) buffers_.CopyIn(p_, v.data(), n_ * sizeof(T));
  }
  std::vector<T> Download() const {
    std::vector<T> v(n_);
    if (n_ > 0) buffers_.CopyOut(v.data(), p_, n_ * sizeof(T));
    return v;
  }

 private:
  TestBuffers& buffers_;
  size_t n_;
  void* p_;
};

// A per-rank test body: the communicator of this rank in a fresh group, and its buffers.
using RankBody = std::function<void(Communicator&, TestBuffers&)>;

struct ConformanceTarget {
  std::string name;  // test name suffix: "fake3", "mpi", "nccl"
  // Runs body once for each rank this process hosts, in a fresh group whose operations time out
  // after `timeout`; returns when they all finished.
  std::function<void(absl::Duration timeout, const RankBody& body)> run;
  bool bf16_reduce = true;          // MPI refuses bf16 reductions
  bool late_peer_completes = true;  // a late collective still matches one that timed out
                                    // (not on NCCL: peers abort their communicators)
};

class CommunicatorConformance : public ::testing::TestWithParam<ConformanceTarget> {};

std::string TargetName(const ::testing::TestParamInfo<ConformanceTarget>& info);

// Fake targets with 1..max_ranks ranks.
std::vector<ConformanceTarget> FakeTargets(int max_ranks);

}  // namespace resa::testing
