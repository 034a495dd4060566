// gtest main for tests run under mpirun: every process is one rank of the MPI world, and every
// process runs the same tests in the same order (each test splits its own communicator off the
// world, so a test that breaks its communicator leaves the others intact). Ranks other than 0
// print only failures.
#include <cstdio>

#include "gtest/gtest.h"
#include "parallel/communicator_factory.h"
#include "tests/mpi/mpi_world.h"

namespace resa::testing {
namespace {
std::unique_ptr<Communicator>* g_world = nullptr;
}  // namespace

Communicator& MpiWorld() { return **g_world; }

}  // namespace resa::testing

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  resa::WorldOptions options;
  options.host = resa::HostBackend::kMpi;
  options.comm.timeout = absl::Seconds(60);
  auto world = resa::CreateWorld(options);
  if (!world.ok()) {
    std::fprintf(stderr, "cannot create the MPI world: %s\n", world.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<resa::Communicator> host = std::move(world->host);
  resa::testing::g_world = &host;
  if (host->rank() != 0) GTEST_FLAG_SET(brief, true);
  std::printf("MPI world: %s\n", host->Describe().c_str());
  const int rc = RUN_ALL_TESTS();
  // Every rank's verdict decides the exit status of each (mpirun fails if any rank fails).
  int32_t failed = rc != 0;
  const absl::Status st = host->AllReduce(resa::DataType::kInt32, resa::ReduceOp::kSum, &failed, 1);
  if (!st.ok()) std::fprintf(stderr, "final agreement failed: %s\n", st.ToString().c_str());
  if (host->rank() == 0 && failed > 0) std::printf("%d rank(s) had failures\n", failed);
  host.reset();  // finalises MPI
  return st.ok() && failed == 0 ? 0 : 1;
}
