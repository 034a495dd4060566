// The conformance suite over NCCL, with device buffers: one rank per process and one GPU per
// rank (a lone process here; under mpirun on a multi-GPU host, one rank per device). Skips,
// saying why, when there is no CUDA device or fewer devices than ranks on a host.
#include <cuda_runtime_api.h>

#include <string>

#include "gtest/gtest.h"
#include "parallel/communicator_factory.h"
#include "parallel/testing/communicator_conformance.h"

namespace resa::testing {
namespace {

class DeviceBuffers final : public TestBuffers {
 public:
  void* Alloc(size_t bytes) override {
    void* p = nullptr;
    EXPECT_EQ(cudaMalloc(&p, bytes), cudaSuccess);
    return p;
  }
  void Free(void* p) override { cudaFree(p); }
  void CopyIn(void* dst, const void* src, size_t bytes) override {
    EXPECT_EQ(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), cudaSuccess);
  }
  void CopyOut(void* dst, const void* src, size_t bytes) override {
    EXPECT_EQ(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
  }
};

// The NCCL world of this process, created before the tests and destroyed after them.
class NcclEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    int count = 0;
    if (cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess || count == 0) {
      skip_ = std::string("no CUDA device (") +
              (e != cudaSuccess ? cudaGetErrorString(e) : "0 devices") + "): NCCL tests skipped";
      return;
    }
    WorldOptions options;
    options.nccl = true;
    options.comm.timeout = absl::Seconds(60);
    auto world = CreateWorld(options);
    if (!world.ok()) {
      // Too few devices for the ranks of a host is a setup limit, not a failure.
      if (world.status().code() == absl::StatusCode::kFailedPrecondition ||
          world.status().code() == absl::StatusCode::kInvalidArgument) {
        skip_ = std::string("NCCL world not available: ") + std::string(world.status().message());
      } else {
        error_ = world.status().ToString();
      }
      return;
    }
    world_ = std::move(world).value();
    std::printf("NCCL world: %s\n", world_.device->Describe().c_str());
  }
  void TearDown() override {
    world_.device.reset();
    world_.host.reset();
  }

  World world_;
  std::string skip_;
  std::string error_;
};

NcclEnvironment* const g_env =
    static_cast<NcclEnvironment*>(::testing::AddGlobalTestEnvironment(new NcclEnvironment));

std::vector<ConformanceTarget> NcclTargets() {
  ConformanceTarget t;
  t.name = "nccl";
  t.late_peer_completes = false;
  t.run = [](absl::Duration timeout, const RankBody& body) {
    if (!g_env->skip_.empty()) GTEST_SKIP() << g_env->skip_;
    ASSERT_TRUE(g_env->error_.empty()) << g_env->error_;
    Communicator& world = *g_env->world_.device;
    auto sub = world.Split(0, world.rank(), "test");
    ASSERT_TRUE(sub.ok()) << sub.status();
    (*sub)->set_timeout(timeout);
    DeviceBuffers buffers;
    body(**sub, buffers);
  };
  return {t};
}

}  // namespace

INSTANTIATE_TEST_SUITE_P(Nccl, CommunicatorConformance, ::testing::ValuesIn(NcclTargets()),
                         TargetName);

TEST(NcclCommunicator, StreamOrderedAllReduceThenSynchronize) {
  if (!g_env->skip_.empty()) GTEST_SKIP() << g_env->skip_;
  ASSERT_TRUE(g_env->error_.empty()) << g_env->error_;
  Communicator& comm = *g_env->world_.device;
  EXPECT_EQ(comm.buffer_location(), BufferLocation::kDevice);
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  DeviceBuffers buffers;
  TestArray<float> a(buffers, 1024);
  a.Upload(std::vector<float>(1024, float(comm.rank() + 1)));
  ASSERT_TRUE(comm.AllReduce(DataType::kFloat32, ReduceOp::kSum, a.data(), 1024, stream).ok());
  ASSERT_TRUE(comm.Synchronize(stream).ok());
  const int n = comm.size();
  EXPECT_EQ(a.Download(), std::vector<float>(1024, float(n * (n + 1) / 2)));
  cudaStreamDestroy(stream);
}

}  // namespace resa::testing
