// MPI communicator over host buffers (compiled when RESA_HAVE_MPI; create it through
// communicator_factory.h). Also the bootstrap that hands out the NCCL unique id.
//
// No call blocks inside MPI: every operation is posted non-blocking (MPI_Iallreduce, MPI_Isend,
// ...) and polled with MPI_Test against the deadline, and communicators use MPI_ERRORS_RETURN,
// so a peer that skips a call or hangs gives DeadlineExceeded. (A peer process that dies is
// reported by mpirun, which ends the job: Open MPI without ULFM has no survivable failures.)
// Data goes through staging buffers owned by the communicator: after a timeout the pending
// request and its buffers are handed to the process-wide MpiRuntime and never freed, so a late
// peer can complete the operation without touching caller memory.
//
// MPI is initialised (MPI_THREAD_MULTIPLE requested, SERIALIZED required) by the first
// CreateWorld and finalised when the last communicator is gone, unless an abandoned request is
// still pending (finalising could then wait for the peer forever; mpirun reports the exit).
#pragma once

#include <mpi.h>

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace resa {

class MpiRuntime;

class MpiCommunicator final : public Communicator {
 public:
  // A duplicate of MPI_COMM_WORLD (initialises MPI if needed).
  static absl::StatusOr<std::unique_ptr<Communicator>> CreateWorld(
      const CommunicatorOptions& options);

  ~MpiCommunicator() override;

  std::string_view backend() const override { return "mpi"; }
  BufferLocation buffer_location() const override { return BufferLocation::kHost; }

 private:
  MpiCommunicator(std::shared_ptr<MpiRuntime> runtime, MPI_Comm comm, int rank, int size,
                  int world_rank, CommunicatorOptions options);

  absl::Status DoAllReduce(DataType type, ReduceOp op, void* data, size_t count,
                           void* stream) override;
  absl::Status DoAllGather(DataType type, const void* send, void* recv, size_t count,
                           void* stream) override;
  absl::Status DoBroadcast(DataType type, void* data, size_t count, int root,
                           void* stream) override;
  absl::Status DoBarrier() override;
  absl::Status DoSend(DataType type, const void* data, size_t count, int peer,
                      void* stream) override;
  absl::Status DoRecv(DataType type, void* data, size_t count, int peer, void* stream) override;
  absl::Status DoSendRecv(DataType type, const void* send, size_t send_count, int dst, void* recv,
                          size_t recv_count, int src, void* stream) override;
  absl::Status DoSynchronize(void*) override { return absl::OkStatus(); }
  absl::StatusOr<std::unique_ptr<Communicator>> DoSplit(
      int color, int key, const CommunicatorOptions& options) override;

  // Polls `reqs` until all complete or the deadline passes. On timeout the first `num_recvs`
  // requests (receives) are cancelled, and the requests and the staging buffers are abandoned to
  // the runtime (replaced by fresh ones). statuses may be null.
  absl::Status Wait(std::vector<MPI_Request>& reqs, std::string_view what,
                    MPI_Status* statuses = nullptr, int num_recvs = 0);
  // Staging buffer i (0: send/in-place, 1: recv) with at least `bytes` bytes.
  unsigned char* Stage(int i, size_t bytes);

  std::shared_ptr<MpiRuntime> runtime_;
  MPI_Comm comm_;
  std::vector<unsigned char> stage_[2];
};

}  // namespace resa
