#include "parallel/nccl_communicator.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "runtime/core/status.h"

namespace resa {
namespace {

absl::Status NcclError(ncclResult_t r, ncclComm_t comm, std::string_view call) {
  absl::StatusCode code = absl::StatusCode::kInternal;
  if (r == ncclInvalidArgument || r == ncclInvalidUsage) code = absl::StatusCode::kInvalidArgument;
  if (r == ncclRemoteError || r == ncclSystemError) code = absl::StatusCode::kUnavailable;
  const char* last = ncclGetLastError(comm);
  return absl::Status(
      code, absl::StrCat(AsAbsl(call), " failed: ", ncclGetErrorString(r),
                         last != nullptr && *last != '\0' ? " (" : "", last != nullptr ? last : "",
                         last != nullptr && *last != '\0' ? ")" : ""));
}

absl::Status CudaError(cudaError_t e, std::string_view call) {
  return absl::InternalError(
      absl::StrCat(AsAbsl(call), " failed: ", cudaGetErrorName(e), ": ", cudaGetErrorString(e)));
}

ncclDataType_t ToNccl(DataType type) {
  switch (type) {
    case DataType::kFloat32:
      return ncclFloat32;
    case DataType::kBFloat16:
      return ncclBfloat16;
    case DataType::kInt32:
      return ncclInt32;
    case DataType::kInt64:
      return ncclInt64;
    case DataType::kUint8:
      return ncclUint8;
  }
  return ncclUint8;
}

// Polls until `comm` leaves ncclInProgress and returns its state; sets *timed_out at the deadline.
absl::StatusOr<ncclResult_t> PollComm(ncclComm_t comm, absl::Time deadline, bool* timed_out) {
  *timed_out = false;
  absl::Duration nap = absl::Microseconds(20);
  const absl::Time spin_until = absl::Now() + absl::Microseconds(200);
  for (;;) {
    ncclResult_t state = ncclSuccess;
    if (ncclResult_t r = ncclCommGetAsyncError(comm, &state); r != ncclSuccess) {
      return NcclError(r, comm, "ncclCommGetAsyncError");
    }
    if (state != ncclInProgress) return state;
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      *timed_out = true;
      return ncclInProgress;
    }
    if (now >= spin_until) {
      absl::SleepFor(std::min(nap, deadline - now));
      nap = std::min(nap * 2, absl::Milliseconds(1));
    }
  }
}

std::string CreatePrefix(const Communicator& bootstrap, int device) {
  return absl::StrCat("nccl rank ", bootstrap.rank(), "/", bootstrap.size(), " (world rank ",
                      bootstrap.world_rank(), ") on host ", HostName(), ", CUDA device ", device,
                      ": ");
}

// Waits for a new communicator to finish its non-blocking creation; aborts it on failure.
absl::Status AwaitNewComm(ncclComm_t comm, absl::Time deadline, absl::Duration timeout,
                          std::string_view call) {
  bool timed_out = false;
  absl::StatusOr<ncclResult_t> state = PollComm(comm, deadline, &timed_out);
  absl::Status st;
  if (!state.ok()) {
    st = state.status();
  } else if (timed_out) {
    st = absl::DeadlineExceededError(absl::StrCat(AsAbsl(call), " did not complete within ",
                                                  absl::FormatDuration(timeout),
                                                  "; a peer did not join, hangs or died"));
  } else if (*state != ncclSuccess) {
    st = NcclError(*state, comm, call);
  }
  if (!st.ok()) ncclCommAbort(comm);
  return st;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> NcclCommunicator::Create(
    Communicator& bootstrap, int device, const CommunicatorOptions& options) {
  const std::string prefix = CreatePrefix(bootstrap, device);
  if (bootstrap.buffer_location() != BufferLocation::kHost) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, "the bootstrap communicator must use host buffers"));
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("communicator timeout must be > 0");
  }
  // Every rank reports whether it could prepare (device, and the unique id on rank 0) before
  // anyone starts NCCL initialisation, so one failure fails every rank at once.
  absl::Status local;
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) {
    local = CudaError(e, absl::StrCat("cudaSetDevice(", device, ")"));
  }
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (local.ok() && bootstrap.rank() == 0) {
    if (ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess) {
      local = NcclError(r, nullptr, "ncclGetUniqueId");
    }
  }
  int32_t failed = local.ok() ? 0 : 1;
  RESA_RETURN_IF_ERROR(Annotate(bootstrap.AllReduce(DataType::kInt32, ReduceOp::kSum, &failed, 1),
                                absl::StrCat(prefix, "agreeing on NCCL setup")));
  if (!local.ok()) return Annotate(local, prefix);
  if (failed > 0) {
    return absl::UnavailableError(
        absl::StrCat(prefix, failed, " peer rank(s) failed to set up their device or NCCL id"));
  }
  RESA_RETURN_IF_ERROR(Annotate(bootstrap.Broadcast(DataType::kUint8, &id, sizeof(id), 0),
                                absl::StrCat(prefix, "broadcasting the NCCL unique id")));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  config.commName = options.name.c_str();
  ncclComm_t comm = nullptr;
  const absl::Time deadline = absl::Now() + options.timeout;
  const ncclResult_t r =
      ncclCommInitRankConfig(&comm, bootstrap.size(), id, bootstrap.rank(), &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    if (comm != nullptr) ncclCommAbort(comm);
    return Annotate(NcclError(r, nullptr, "ncclCommInitRankConfig"), prefix);
  }
  RESA_RETURN_IF_ERROR(
      Annotate(AwaitNewComm(comm, deadline, options.timeout, "ncclCommInitRankConfig"), prefix));
  std::unique_ptr<NcclCommunicator> out(new NcclCommunicator(
      comm, device, bootstrap.rank(), bootstrap.size(), bootstrap.world_rank(), options));
  out->bootstrap_ = &bootstrap;
  RESA_RETURN_IF_ERROR(Annotate(out->Init(), prefix));
  return std::unique_ptr<Communicator>(std::move(out));
}

NcclCommunicator::NcclCommunicator(ncclComm_t comm, int device, int rank, int size, int world_rank,
                                   CommunicatorOptions options)
    : Communicator(rank, size, world_rank, std::move(options)), comm_(comm), device_(device) {}

absl::Status NcclCommunicator::Init() {
  if (cudaError_t e = cudaSetDevice(device_); e != cudaSuccess) {
    return CudaError(e, "cudaSetDevice");
  }
  cudaStream_t s = nullptr;
  if (cudaError_t e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking); e != cudaSuccess) {
    return CudaError(e, "cudaStreamCreateWithFlags");
  }
  internal_stream_ = s;
  if (cudaError_t e = cudaMalloc(reinterpret_cast<void**>(&scratch_), sizeof(int));
      e != cudaSuccess) {
    return CudaError(e, "cudaMalloc(barrier word)");
  }
  if (cudaError_t e = cudaMemset(scratch_, 0, sizeof(int)); e != cudaSuccess) {
    return CudaError(e, "cudaMemset(barrier word)");
  }
  return absl::OkStatus();
}

NcclCommunicator::~NcclCommunicator() {
  cudaSetDevice(device_);
  if (!aborted_ && comm_ != nullptr) {
    bool clean = health().ok();
    if (clean) {
      // Finalize flushes pending work; bounded by the timeout like every other wait.
      const ncclResult_t r = ncclCommFinalize(comm_);
      bool timed_out = false;
      absl::StatusOr<ncclResult_t> state = r == ncclSuccess || r == ncclInProgress
                                               ? PollComm(comm_, Deadline(), &timed_out)
                                               : absl::StatusOr<ncclResult_t>(r);
      clean = state.ok() && !timed_out && *state == ncclSuccess;
    }
    if (clean) {
      ncclCommDestroy(comm_);
    } else {
      ncclCommAbort(comm_);
    }
  }
  if (scratch_ != nullptr) cudaFree(scratch_);
  if (internal_stream_ != nullptr) cudaStreamDestroy(static_cast<cudaStream_t>(internal_stream_));
}

absl::Status NcclCommunicator::AbortWith(absl::Status st) {
  if (!aborted_) {
    ncclCommAbort(comm_);
    aborted_ = true;
  }
  return st;
}

absl::StatusOr<void*> NcclCommunicator::Begin(void* stream) {
  if (cudaError_t e = cudaSetDevice(device_); e != cudaSuccess) {
    return CudaError(e, absl::StrCat("cudaSetDevice(", device_, ")"));
  }
  return stream != nullptr ? stream : internal_stream_;
}

absl::Status NcclCommunicator::Finish(ncclResult_t issued, void* caller_stream,
                                      std::string_view what) {
  if (issued != ncclSuccess && issued != ncclInProgress) {
    return AbortWith(NcclError(issued, comm_, what));
  }
  bool timed_out = false;
  absl::StatusOr<ncclResult_t> state = PollComm(comm_, Deadline(), &timed_out);
  if (!state.ok()) return AbortWith(state.status());
  if (timed_out) return AbortWith(TimeoutError(absl::StrCat(AsAbsl(what), " (enqueue)")));
  if (*state != ncclSuccess) return AbortWith(NcclError(*state, comm_, what));
  if (caller_stream != nullptr) return absl::OkStatus();
  return DoSynchronize(nullptr);
}

absl::Status NcclCommunicator::DoSynchronize(void* stream) {
  if (cudaError_t e = cudaSetDevice(device_); e != cudaSuccess) {
    return CudaError(e, "cudaSetDevice");
  }
  auto* s = static_cast<cudaStream_t>(stream != nullptr ? stream : internal_stream_);
  const absl::Time deadline = Deadline();
  absl::Duration nap = absl::Microseconds(20);
  const absl::Time spin_until = absl::Now() + absl::Microseconds(200);
  for (;;) {
    const cudaError_t e = cudaStreamQuery(s);
    if (e != cudaSuccess && e != cudaErrorNotReady) {
      return AbortWith(CudaError(e, "cudaStreamQuery"));
    }
    ncclResult_t state = ncclSuccess;
    if (ncclResult_t r = ncclCommGetAsyncError(comm_, &state); r != ncclSuccess) {
      return AbortWith(NcclError(r, comm_, "ncclCommGetAsyncError"));
    }
    if (state != ncclSuccess && state != ncclInProgress) {
      return AbortWith(NcclError(state, comm_, "NCCL operation (asynchronous error)"));
    }
    if (e == cudaSuccess) return absl::OkStatus();
    const absl::Time now = absl::Now();
    if (now >= deadline) return AbortWith(TimeoutError("stream synchronisation"));
    if (now >= spin_until) {
      absl::SleepFor(std::min(nap, deadline - now));
      nap = std::min(nap * 2, absl::Milliseconds(1));
    }
  }
}

absl::Status NcclCommunicator::DoAllReduce(DataType type, ReduceOp op, void* data, size_t count,
                                           void* stream) {
  RESA_ASSIGN_OR_RETURN(void* s, Begin(stream));
  const ncclResult_t r =
      ncclAllReduce(data, data, count, ToNccl(type), op == ReduceOp::kSum ? ncclSum : ncclMax,
                    comm_, static_cast<cudaStream_t>(s));
  return Finish(r, stream, "ncclAllReduce");
}

absl::Status NcclCommunicator::DoAllGather(DataType type, const void* send, void* recv,
                                           size_t count, void* stream) {
  RESA_ASSIGN_OR_RETURN(void* s, Begin(stream));
  const ncclResult_t r =
      ncclAllGather(send, recv, count, ToNccl(type), comm_, static_cast<cudaStream_t>(s));
  return Finish(r, stream, "ncclAllGather");
}

absl::Status NcclCommunicator::DoBroadcast(DataType type, void* data, size_t count, int root,
                                           void* stream) {
  RESA_ASSIGN_OR_RETURN(void* s, Begin(stream));
  const ncclResult_t r =
      ncclBroadcast(data, data, count, ToNccl(type), root, comm_, static_cast<cudaStream_t>(s));
  return Finish(r, stream, "ncclBroadcast");
}

absl::Status NcclCommunicator::DoBarrier() {
  RESA_ASSIGN_OR_RETURN(void* s, Begin(nullptr));
  const ncclResult_t r =
      ncclAllReduce(scratch_, scratch_, 1, ncclInt32, ncclSum, comm_, static_cast<cudaStream_t>(s));
  return Finish(r, nullptr, "ncclAllReduce (barrier)");
}

absl::Status NcclCommunicator::DoSend(DataType type, const void* data, size_t count, int peer,
                                      void* stream) {
  RESA_ASSIGN_OR_RETURN(void* s, Begin(stream));
  const ncclResult_t r =
      ncclSend(data, count, ToNccl(type), peer, comm_, static_cast<cudaStream_t>(s));
  return Finish(r, stream, "ncclSend");
}

absl::Status NcclCommunicator::DoRecv(DataType type, void* data, size_t count, int peer,
                                      void* stream) {
  RESA_ASSIGN_OR_RETURN(void* s, Begin(stream));
  const ncclResult_t r =
      ncclRecv(data, count, ToNccl(type), peer, comm_, static_cast<cudaStream_t>(s));
  return Finish(r, stream, "ncclRecv");
}

absl::Status NcclCommunicator::DoSendRecv(DataType type, const void* send, size_t send_count,
                                          int dst, void* recv, size_t recv_count, int src,
                                          void* stream) {
  RESA_ASSIGN_OR_RETURN(void* s, Begin(stream));
  auto* cs = static_cast<cudaStream_t>(s);
  ncclResult_t r = ncclGroupStart();
  if (r == ncclSuccess) r = ncclSend(send, send_count, ToNccl(type), dst, comm_, cs);
  if (r == ncclSuccess || r == ncclInProgress) {
    r = ncclRecv(recv, recv_count, ToNccl(type), src, comm_, cs);
  }
  const ncclResult_t end = ncclGroupEnd();
  return Finish(r == ncclSuccess || r == ncclInProgress ? end : r, stream, "ncclSend/ncclRecv");
}

absl::StatusOr<std::unique_ptr<Communicator>> NcclCommunicator::DoSplit(
    int color, int key, const CommunicatorOptions& options) {
  // Sub-groups are built the way the world is: split the host bootstrap, then a fresh NCCL
  // communicator from a unique id broadcast over it. (ncclCommSplit on a non-blocking parent
  // returned no child on the H200 with CUDA 13's NCCL.)
  RESA_ASSIGN_OR_RETURN(void* s, Begin(nullptr));
  (void)s;
  if (bootstrap_ == nullptr) {
    return absl::FailedPreconditionError("this NCCL communicator has no host bootstrap to split");
  }
  RESA_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> host,
                        bootstrap_->Split(color, key, absl::StrCat(AsAbsl(options.name), ".host")));
  RESA_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> child, Create(*host, device_, options));
  auto* nccl = static_cast<NcclCommunicator*>(child.get());
  nccl->owned_bootstrap_ = std::move(host);
  nccl->bootstrap_ = nccl->owned_bootstrap_.get();
  return child;
}

}  // namespace resa
