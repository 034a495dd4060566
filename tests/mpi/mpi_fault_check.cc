// A job in which one rank fails, for mpi_fault_check.sh: `die` makes the last rank exit at once,
// `hang` makes it sleep instead of joining the collective. The other ranks run an all-reduce
// with a short timeout and print what they get. The script checks that the job ends, with an
// error, well within a bound, and (hang) that the survivors' error names rank and operation.
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "parallel/communicator_factory.h"

int main(int argc, char** argv) {
  if (argc != 2 || (std::strcmp(argv[1], "die") != 0 && std::strcmp(argv[1], "hang") != 0)) {
    std::fprintf(stderr, "usage: %s die|hang\n", argv[0]);
    return 2;
  }
  resa::WorldOptions options;
  options.host = resa::HostBackend::kMpi;
  options.comm.timeout = absl::Seconds(3);
  auto world = resa::CreateWorld(options);
  if (!world.ok()) {
    std::fprintf(stderr, "%s\n", world.status().ToString().c_str());
    return 1;
  }
  resa::Communicator& comm = *world->host;
  if (!comm.Barrier().ok()) return 1;
  if (comm.rank() == comm.size() - 1) {
    if (std::strcmp(argv[1], "die") == 0) _exit(3);  // no finalise: a crashed rank
    sleep(60);                                       // a hung rank: mpirun ends it
    return 0;
  }
  int32_t x = 1;
  const absl::Status st = comm.AllReduce(resa::DataType::kInt32, resa::ReduceOp::kSum, &x, 1);
  std::printf("rank %d: %s\n", comm.rank(), st.ToString().c_str());
  std::fflush(stdout);
  // Exiting without a clean finalise (the runtime skips it: a request is still pending) makes
  // mpirun end the job, the hung rank included.
  return st.ok() ? 0 : 1;
}
