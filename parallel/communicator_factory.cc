// The only file of parallel/ with backend #if's: RESA_HAVE_MPI and RESA_HAVE_NCCL are defined
// (0 or 1) for this source alone by parallel/CMakeLists.txt.
#include "parallel/communicator_factory.h"

#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "parallel/fake_communicator.h"
#include "runtime/core/status.h"

#if RESA_HAVE_MPI
#include "parallel/mpi_communicator.h"
#endif
#if RESA_HAVE_NCCL
#include <cuda_runtime_api.h>

#include "parallel/nccl_communicator.h"
#endif

namespace resa {

bool HaveMpiBackend() { return RESA_HAVE_MPI; }
bool HaveNcclBackend() { return RESA_HAVE_NCCL; }

absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> CreateFakeGroup(
    int n, const CommunicatorOptions& options) {
  return FakeCommunicator::CreateGroup(n, options);
}

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    Communicator& bootstrap, int device, const CommunicatorOptions& options) {
#if RESA_HAVE_NCCL
  return NcclCommunicator::Create(bootstrap, device, options);
#else
  (void)bootstrap;
  (void)device;
  (void)options;
  return absl::UnimplementedError(
      "this build has no NCCL backend; reconfigure with CUDA and NCCL and -DRESA_NCCL=ON");
#endif
}

namespace {

constexpr size_t kHostField = 256;

absl::StatusOr<std::unique_ptr<Communicator>> CreateHostWorld(const WorldOptions& options) {
  HostBackend backend = options.host;
  if (backend == HostBackend::kAuto)
    backend = HaveMpiBackend() ? HostBackend::kMpi : HostBackend::kSelf;
  if (backend == HostBackend::kSelf) {
    RESA_ASSIGN_OR_RETURN(std::vector<std::unique_ptr<Communicator>> group,
                          FakeCommunicator::CreateGroup(1, options.comm));
    return std::move(group[0]);
  }
#if RESA_HAVE_MPI
  return MpiCommunicator::CreateWorld(options.comm);
#else
  return absl::UnimplementedError(
      "this build has no MPI backend; install an MPI (e.g. libopenmpi-dev) and reconfigure with "
      "-DRESA_MPI=ON");
#endif
}

// Fails on every rank when two ranks of one host chose the same CUDA device (used by NCCL
// builds only).
[[maybe_unused]] absl::Status CheckDistinctDevices(Communicator& host, int device) {
  struct Entry {
    char host[kHostField];
    int32_t device;
  };
  Entry mine;
  std::memset(&mine, 0, sizeof(mine));
  std::strncpy(mine.host, HostName().c_str(), kHostField - 1);
  mine.device = device;
  std::vector<Entry> all(size_t(host.size()));
  RESA_RETURN_IF_ERROR(host.AllGather(DataType::kUint8, &mine, all.data(), sizeof(Entry)));
  for (size_t a = 0; a < all.size(); ++a) {
    for (size_t b = a + 1; b < all.size(); ++b) {
      if (all[a].device == all[b].device && std::strcmp(all[a].host, all[b].host) == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("ranks ", a, " and ", b, " on host ", all[a].host,
                         " both use CUDA device ", all[a].device,
                         "; NCCL needs one device per rank (fewer ranks per host, or set the "
                         "device per rank)"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LocalRank> ComputeLocalRank(Communicator& comm) {
  char mine[kHostField] = {};
  std::strncpy(mine, HostName().c_str(), kHostField - 1);
  std::vector<char> all(kHostField * size_t(comm.size()));
  RESA_RETURN_IF_ERROR(comm.AllGather(DataType::kUint8, mine, all.data(), kHostField));
  LocalRank out{0, 0};
  for (int r = 0; r < comm.size(); ++r) {
    if (std::strncmp(&all[size_t(r) * kHostField], mine, kHostField) == 0) {
      if (r < comm.rank()) ++out.rank;
      ++out.size;
    }
  }
  return out;
}

absl::StatusOr<World> CreateWorld(const WorldOptions& options) {
  World world;
  RESA_ASSIGN_OR_RETURN(world.host, CreateHostWorld(options));
  RESA_ASSIGN_OR_RETURN(LocalRank local, ComputeLocalRank(*world.host));
  world.local_rank = local.rank;
  world.local_size = local.size;
  if (!options.nccl) return world;
#if RESA_HAVE_NCCL
  int count = 0;
  absl::Status device_st;
  if (cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess) {
    device_st = absl::FailedPreconditionError(
        absl::StrCat("no usable CUDA device: cudaGetDeviceCount: ", cudaGetErrorString(e)));
  }
  const int device = options.cuda_device >= 0 ? options.cuda_device : world.local_rank;
  if (device_st.ok() && device >= count) {
    device_st = absl::FailedPreconditionError(absl::StrCat(
        "CUDA device ", device, " requested (local rank ", world.local_rank, " of ",
        world.local_size, " on this host) but only ", count, " device(s) are visible"));
  }
  // Agree on failure before any rank enters NCCL initialisation.
  int32_t failed = device_st.ok() ? 0 : 1;
  RESA_RETURN_IF_ERROR(world.host->AllReduce(DataType::kInt32, ReduceOp::kSum, &failed, 1));
  if (!device_st.ok()) return Annotate(device_st, world.host->Describe());
  if (failed > 0) {
    return absl::FailedPreconditionError(absl::StrCat(world.host->Describe(), ": ", failed,
                                                      " peer rank(s) have no usable CUDA device"));
  }
  RESA_RETURN_IF_ERROR(Annotate(CheckDistinctDevices(*world.host, device), world.host->Describe()));
  RESA_ASSIGN_OR_RETURN(world.device, NcclCommunicator::Create(*world.host, device, options.comm));
  return world;
#else
  return absl::UnimplementedError(
      "this build has no NCCL backend; reconfigure with CUDA and NCCL and -DRESA_NCCL=ON");
#endif
}

}  // namespace resa
