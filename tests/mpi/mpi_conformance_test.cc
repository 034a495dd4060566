// The Communicator conformance suite over MPI: one rank per process.
#include "gtest/gtest.h"
#include "parallel/testing/communicator_conformance.h"
#include "tests/mpi/mpi_world.h"

namespace resa::testing {
namespace {

std::vector<ConformanceTarget> MpiTargets() {
  ConformanceTarget t;
  t.name = "mpi";
  t.bf16_reduce = false;
  t.run = [](absl::Duration timeout, const RankBody& body) {
    auto sub = MpiWorld().Split(0, MpiWorld().rank(), "test");
    ASSERT_TRUE(sub.ok()) << sub.status();
    (*sub)->set_timeout(timeout);
    auto host = MakeHostTestBuffers();
    body(**sub, *host);
  };
  return {t};
}

}  // namespace

INSTANTIATE_TEST_SUITE_P(Mpi, CommunicatorConformance, ::testing::ValuesIn(MpiTargets()),
                         TargetName);

}  // namespace resa::testing
