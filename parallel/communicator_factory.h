// Creating communicators: the one place that knows which backends were built
// (communicator_factory.cc holds the only backend #if of parallel/).
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace resa {

// Whether this build has the MPI / NCCL backends (RESA_MPI, RESA_NCCL at configure time).
bool HaveMpiBackend();
bool HaveNcclBackend();

enum class HostBackend {
  kAuto,  // MPI when built with it (a lone process is a world of one), else kSelf
  kSelf,  // one rank, no MPI (the in-process fake of size 1)
  kMpi,   // MPI_COMM_WORLD; Unimplemented when built without MPI
};

struct WorldOptions {
  HostBackend host = HostBackend::kAuto;
  // Also create the NCCL world over the host world (Unimplemented when built without NCCL).
  bool nccl = false;
  // CUDA device of this rank for NCCL; -1: the local rank (rank among the ranks on this host).
  int cuda_device = -1;
  CommunicatorOptions comm;
};

struct World {
  std::unique_ptr<Communicator> host;    // host buffers: control messages, CPU tensors
  std::unique_ptr<Communicator> device;  // device buffers (NCCL); null unless WorldOptions.nccl
  int local_rank = 0;                    // rank among the ranks on this host
  int local_size = 1;
};

// Collective over every process of the job. With nccl, checks that no two ranks of a host use
// the same CUDA device (NCCL would hang) and that the device exists.
absl::StatusOr<World> CreateWorld(const WorldOptions& options);

// n in-process ranks for tests (FakeCommunicator): element r is rank r; use each from one thread.
absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> CreateFakeGroup(
    int n, const CommunicatorOptions& options = {});

// NCCL communicator of bootstrap's rank and size on `device`, bootstrapped over `bootstrap`
// (a host-buffer communicator). Collective over bootstrap.
absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    Communicator& bootstrap, int device, const CommunicatorOptions& options);

struct LocalRank {
  int rank = 0;
  int size = 1;
};
// Rank among the ranks of `comm` that run on this host (same host name), ordered by rank, and
// how many there are. Collective (one all-gather of host names).
absl::StatusOr<LocalRank> ComputeLocalRank(Communicator& comm);

}  // namespace resa
