// NCCL communicator over device buffers (compiled when RESA_HAVE_NCCL; create it through
// communicator_factory.h).
//
// The communicator is non-blocking (ncclConfig_t.blocking = 0): NCCL calls return at once,
// possibly with ncclInProgress, and every wait here (enqueue, stream completion, creation, split,
// finalisation) polls ncclCommGetAsyncError and cudaStreamQuery against the deadline. On a timeout
// or an asynchronous NCCL error the communicator is aborted (ncclCommAbort), which frees the GPU
// from the pending kernels, and the error names rank and operation.
//
// Stream contract (communicator.h): a null stream runs the operation on an internal stream and
// waits for it; a non-null stream only enqueues, Synchronize(stream) waits under the timeout.
// Barrier always waits. Every call first makes the communicator's device current on the calling
// thread.
#pragma once

#include <nccl.h>

#include <memory>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace resa {

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `bootstrap`, a host-buffer communicator (MPI, or the fake for threads): its
  // rank 0 makes the NCCL unique id and broadcasts it, then every rank joins the NCCL
  // communicator of the same rank and size on CUDA device `device`. `bootstrap` must outlive
  // the result: Split builds sub-groups over it.
  static absl::StatusOr<std::unique_ptr<Communicator>> Create(Communicator& bootstrap, int device,
                                                              const CommunicatorOptions& options);

  ~NcclCommunicator() override;

  std::string_view backend() const override { return "nccl"; }
  BufferLocation buffer_location() const override { return BufferLocation::kDevice; }
  int device() const { return device_; }

 private:
  // Split's sub-groups own the host communicator they were built over.
  Communicator* bootstrap_ = nullptr;
  std::unique_ptr<Communicator> owned_bootstrap_;

  NcclCommunicator(ncclComm_t comm, int device, int rank, int size, int world_rank,
                   CommunicatorOptions options);
  // Creates the internal stream and the barrier scratch word.
  absl::Status Init();

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
  absl::Status DoSynchronize(void* stream) override;
  absl::StatusOr<std::unique_ptr<Communicator>> DoSplit(
      int color, int key, const CommunicatorOptions& options) override;

  // Makes device_ current and picks the stream (internal when null).
  absl::StatusOr<void*> Begin(void* stream);
  // After issuing an NCCL call: waits until it is enqueued, then, for a null caller stream,
  // until the internal stream drains.
  absl::Status Finish(ncclResult_t issued, void* caller_stream, std::string_view what);
  // Aborts the communicator and returns `st` (used on timeouts and NCCL errors).
  absl::Status AbortWith(absl::Status st);

  ncclComm_t comm_;
  int device_;
  void* internal_stream_ = nullptr;  // cudaStream_t
  int* scratch_ = nullptr;           // device word for Barrier
  bool aborted_ = false;
};

}  // namespace resa
