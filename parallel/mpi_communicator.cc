#include "parallel/mpi_communicator.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "runtime/core/status.h"

namespace resa {

// Process-wide MPI state: initialisation, finalisation and the requests abandoned by timeouts.
class MpiRuntime {
 public:
  static absl::StatusOr<std::shared_ptr<MpiRuntime>> Acquire();
  ~MpiRuntime();

  // Keeps timed-out requests and the buffers they may still write, for the rest of the process.
  void Abandon(std::vector<MPI_Request> reqs, std::vector<unsigned char> a,
               std::vector<unsigned char> b) {
    std::lock_guard<std::mutex> lock(mu_);
    reqs_.insert(reqs_.end(), reqs.begin(), reqs.end());
    kept_.push_back(std::move(a));
    kept_.push_back(std::move(b));
  }

 private:
  explicit MpiRuntime(bool owns) : owns_(owns) {}
  const bool owns_;  // this runtime called MPI_Init_thread, so it calls MPI_Finalize
  std::mutex mu_;
  std::vector<MPI_Request> reqs_;
  std::vector<std::vector<unsigned char>> kept_;
};

namespace {

constexpr int kTag = 7001;

std::mutex g_runtime_mu;
std::weak_ptr<MpiRuntime> g_runtime;

absl::Status MpiError(int rc, std::string_view call) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  MPI_Error_string(rc, text, &len);
  int cls = MPI_ERR_OTHER;
  MPI_Error_class(rc, &cls);
  const bool bad_args = cls == MPI_ERR_BUFFER || cls == MPI_ERR_COUNT || cls == MPI_ERR_TYPE ||
                        cls == MPI_ERR_TAG || cls == MPI_ERR_RANK || cls == MPI_ERR_ROOT ||
                        cls == MPI_ERR_OP || cls == MPI_ERR_ARG || cls == MPI_ERR_TRUNCATE;
  return absl::Status(
      bad_args ? absl::StatusCode::kInvalidArgument : absl::StatusCode::kUnavailable,
      absl::StrCat(AsAbsl(call), " failed: ", std::string(text, size_t(len))));
}

#define RESA_MPI_CALL(call)                     \
  do {                                          \
    if (int _rc = (call); _rc != MPI_SUCCESS) { \
      return MpiError(_rc, #call);              \
    }                                           \
  } while (false)

MPI_Datatype ToMpi(DataType type) {
  switch (type) {
    case DataType::kFloat32:
      return MPI_FLOAT;
    case DataType::kBFloat16:
      return MPI_UINT16_T;  // moved as bits; reductions are refused
    case DataType::kInt32:
      return MPI_INT32_T;
    case DataType::kInt64:
      return MPI_INT64_T;
    case DataType::kUint8:
      return MPI_UINT8_T;
  }
  return MPI_DATATYPE_NULL;
}

absl::Status CheckCount(size_t count) {
  if (count > size_t(INT_MAX)) {
    return absl::InvalidArgumentError(
        absl::StrCat("count ", count, " exceeds MPI's int limit; split the transfer"));
  }
  return absl::OkStatus();
}

// Polls until every request completes (true), or the deadline passes (false).
absl::StatusOr<bool> PollUntil(std::vector<MPI_Request>& reqs, absl::Time deadline,
                               MPI_Status* statuses) {
  absl::Duration nap = absl::Microseconds(20);
  const absl::Time spin_until = absl::Now() + absl::Microseconds(200);
  for (;;) {
    int done = 0;
    const int rc = MPI_Testall(int(reqs.size()), reqs.data(), &done, statuses);
    if (rc != MPI_SUCCESS) {
      int first = rc;
      if (rc == MPI_ERR_IN_STATUS) {
        for (size_t i = 0; i < reqs.size(); ++i) {
          if (statuses[i].MPI_ERROR != MPI_SUCCESS) {
            first = statuses[i].MPI_ERROR;
            break;
          }
        }
      }
      return MpiError(first, "MPI_Testall");
    }
    if (done) return true;
    const absl::Time now = absl::Now();
    if (now >= deadline) return false;
    // Spin briefly for latency, then back off so oversubscribed ranks leave the CPU to others.
    if (now >= spin_until) {
      absl::SleepFor(std::min(nap, deadline - now));
      nap = std::min(nap * 2, absl::Milliseconds(1));
    }
  }
}

}  // namespace

absl::StatusOr<std::shared_ptr<MpiRuntime>> MpiRuntime::Acquire() {
  std::lock_guard<std::mutex> lock(g_runtime_mu);
  if (std::shared_ptr<MpiRuntime> rt = g_runtime.lock()) return rt;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) {
    return absl::FailedPreconditionError(
        "MPI was already finalised in this process and cannot be initialised again");
  }
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    RESA_MPI_CALL(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided));
    if (provided < MPI_THREAD_SERIALIZED) {
      MPI_Finalize();
      return absl::FailedPreconditionError(absl::StrCat("the MPI library provides thread level ",
                                                        provided,
                                                        ", resa needs MPI_THREAD_SERIALIZED"));
    }
  }
  RESA_MPI_CALL(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  std::shared_ptr<MpiRuntime> rt(new MpiRuntime(!initialized));
  g_runtime = rt;
  return rt;
}

MpiRuntime::~MpiRuntime() {
  if (!owns_) return;
  int done = 1;
  if (!reqs_.empty()) {
    MPI_Testall(int(reqs_.size()), reqs_.data(), &done, MPI_STATUSES_IGNORE);
  }
  if (done) {
    MPI_Finalize();
    return;
  }
  // A peer never completed an abandoned operation: MPI_Finalize could wait for it forever, and
  // MPI may still write the kept buffers, so both are left alone until the process exits.
  new std::vector<std::vector<unsigned char>>(std::move(kept_));
}

absl::StatusOr<std::unique_ptr<Communicator>> MpiCommunicator::CreateWorld(
    const CommunicatorOptions& options) {
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("communicator timeout must be > 0");
  }
  RESA_ASSIGN_OR_RETURN(std::shared_ptr<MpiRuntime> rt, MpiRuntime::Acquire());
  int rank = 0, size = 0;
  RESA_MPI_CALL(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  RESA_MPI_CALL(MPI_Comm_size(MPI_COMM_WORLD, &size));
  MPI_Comm comm = MPI_COMM_NULL;
  std::vector<MPI_Request> req(1);
  RESA_MPI_CALL(MPI_Comm_idup(MPI_COMM_WORLD, &comm, &req[0]));
  MPI_Status status;
  RESA_ASSIGN_OR_RETURN(bool done, PollUntil(req, absl::Now() + options.timeout, &status));
  if (!done) {
    return absl::DeadlineExceededError(
        absl::StrCat("mpi world rank ", rank, "/", size, " on host ", HostName(),
                     ": MPI_Comm_idup(MPI_COMM_WORLD) did not complete within ",
                     absl::FormatDuration(options.timeout), "; a rank did not start or hangs"));
  }
  RESA_MPI_CALL(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN));
  return std::unique_ptr<Communicator>(
      new MpiCommunicator(std::move(rt), comm, rank, size, rank, options));
}

MpiCommunicator::MpiCommunicator(std::shared_ptr<MpiRuntime> runtime, MPI_Comm comm, int rank,
                                 int size, int world_rank, CommunicatorOptions options)
    : Communicator(rank, size, world_rank, std::move(options)),
      runtime_(std::move(runtime)),
      comm_(comm) {}

MpiCommunicator::~MpiCommunicator() {
  // A broken communicator may have abandoned requests on it: leave it to process exit.
  if (health().ok() && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

unsigned char* MpiCommunicator::Stage(int i, size_t bytes) {
  if (stage_[i].size() < bytes) stage_[i].resize(bytes);
  return stage_[i].data();
}

absl::Status MpiCommunicator::Wait(std::vector<MPI_Request>& reqs, std::string_view what,
                                   MPI_Status* statuses, int num_recvs) {
  std::vector<MPI_Status> local(reqs.size());
  if (statuses == nullptr) statuses = local.data();
  RESA_ASSIGN_OR_RETURN(bool done, PollUntil(reqs, Deadline(), statuses));
  if (done) return absl::OkStatus();
  // Receives can be withdrawn (collectives and sends cannot): a cancelled receive completes, so
  // it does not keep MPI_Finalize from running.
  for (int i = 0; i < num_recvs; ++i) {
    if (reqs[size_t(i)] != MPI_REQUEST_NULL) MPI_Cancel(&reqs[size_t(i)]);
  }
  runtime_->Abandon(reqs, std::move(stage_[0]), std::move(stage_[1]));
  stage_[0] = {};
  stage_[1] = {};
  return TimeoutError(what);
}

absl::Status MpiCommunicator::DoAllReduce(DataType type, ReduceOp op, void* data, size_t count,
                                          void*) {
  if (type == DataType::kBFloat16) {
    return absl::UnimplementedError("bf16 reductions are not supported over MPI; use float32");
  }
  RESA_RETURN_IF_ERROR(CheckCount(count));
  const size_t bytes = count * DataTypeSize(type);
  unsigned char* buf = Stage(0, bytes);
  if (bytes > 0) std::memcpy(buf, data, bytes);
  std::vector<MPI_Request> req(1);
  RESA_MPI_CALL(MPI_Iallreduce(MPI_IN_PLACE, buf, int(count), ToMpi(type),
                               op == ReduceOp::kSum ? MPI_SUM : MPI_MAX, comm_, &req[0]));
  RESA_RETURN_IF_ERROR(Wait(req, "MPI_Iallreduce"));
  if (bytes > 0) std::memcpy(data, buf, bytes);
  return absl::OkStatus();
}

absl::Status MpiCommunicator::DoAllGather(DataType type, const void* send, void* recv, size_t count,
                                          void*) {
  RESA_RETURN_IF_ERROR(CheckCount(count));
  const size_t bytes = count * DataTypeSize(type);
  unsigned char* buf = Stage(1, bytes * size_t(size()));
  if (bytes > 0) std::memcpy(buf + size_t(rank()) * bytes, send, bytes);
  std::vector<MPI_Request> req(1);
  RESA_MPI_CALL(MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, int(count), ToMpi(type),
                               comm_, &req[0]));
  RESA_RETURN_IF_ERROR(Wait(req, "MPI_Iallgather"));
  if (bytes > 0) std::memcpy(recv, buf, bytes * size_t(size()));
  return absl::OkStatus();
}

absl::Status MpiCommunicator::DoBroadcast(DataType type, void* data, size_t count, int root,
                                          void*) {
  RESA_RETURN_IF_ERROR(CheckCount(count));
  const size_t bytes = count * DataTypeSize(type);
  unsigned char* buf = Stage(0, bytes);
  if (rank() == root && bytes > 0) std::memcpy(buf, data, bytes);
  std::vector<MPI_Request> req(1);
  RESA_MPI_CALL(MPI_Ibcast(buf, int(count), ToMpi(type), root, comm_, &req[0]));
  RESA_RETURN_IF_ERROR(Wait(req, "MPI_Ibcast"));
  if (rank() != root && bytes > 0) std::memcpy(data, buf, bytes);
  return absl::OkStatus();
}

absl::Status MpiCommunicator::DoBarrier() {
  std::vector<MPI_Request> req(1);
  RESA_MPI_CALL(MPI_Ibarrier(comm_, &req[0]));
  return Wait(req, "MPI_Ibarrier");
}

absl::Status MpiCommunicator::DoSend(DataType type, const void* data, size_t count, int peer,
                                     void*) {
  RESA_RETURN_IF_ERROR(CheckCount(count));
  const size_t bytes = count * DataTypeSize(type);
  unsigned char* buf = Stage(0, bytes);
  if (bytes > 0) std::memcpy(buf, data, bytes);
  std::vector<MPI_Request> req(1);
  RESA_MPI_CALL(MPI_Isend(buf, int(count), ToMpi(type), peer, kTag, comm_, &req[0]));
  return Wait(req, "MPI_Isend");
}

namespace {
absl::Status CheckReceived(const MPI_Status& status, DataType type, size_t count, int peer) {
  int got = 0;
  RESA_MPI_CALL(MPI_Get_count(&status, ToMpi(type), &got));
  if (got != int(count)) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", peer, " sent ", got, " elements, this rank expected ", count));
  }
  return absl::OkStatus();
}
}  // namespace

absl::Status MpiCommunicator::DoRecv(DataType type, void* data, size_t count, int peer, void*) {
  RESA_RETURN_IF_ERROR(CheckCount(count));
  const size_t bytes = count * DataTypeSize(type);
  unsigned char* buf = Stage(1, bytes);
  std::vector<MPI_Request> req(1);
  MPI_Status status;
  RESA_MPI_CALL(MPI_Irecv(buf, int(count), ToMpi(type), peer, kTag, comm_, &req[0]));
  RESA_RETURN_IF_ERROR(Wait(req, absl::StrCat("MPI_Irecv from rank ", peer), &status, 1));
  RESA_RETURN_IF_ERROR(CheckReceived(status, type, count, peer));
  if (bytes > 0) std::memcpy(data, buf, bytes);
  return absl::OkStatus();
}

absl::Status MpiCommunicator::DoSendRecv(DataType type, const void* send, size_t send_count,
                                         int dst, void* recv, size_t recv_count, int src, void*) {
  RESA_RETURN_IF_ERROR(CheckCount(send_count));
  RESA_RETURN_IF_ERROR(CheckCount(recv_count));
  const size_t send_bytes = send_count * DataTypeSize(type);
  const size_t recv_bytes = recv_count * DataTypeSize(type);
  unsigned char* out = Stage(0, send_bytes);
  unsigned char* in = Stage(1, recv_bytes);
  if (send_bytes > 0) std::memcpy(out, send, send_bytes);
  std::vector<MPI_Request> reqs(2);
  MPI_Status statuses[2];
  RESA_MPI_CALL(MPI_Irecv(in, int(recv_count), ToMpi(type), src, kTag, comm_, &reqs[0]));
  RESA_MPI_CALL(MPI_Isend(out, int(send_count), ToMpi(type), dst, kTag, comm_, &reqs[1]));
  RESA_RETURN_IF_ERROR(
      Wait(reqs, absl::StrCat("MPI_Isend/MPI_Irecv with ranks ", dst, "/", src), statuses, 1));
  RESA_RETURN_IF_ERROR(CheckReceived(statuses[0], type, recv_count, src));
  if (recv_bytes > 0) std::memcpy(recv, in, recv_bytes);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Communicator>> MpiCommunicator::DoSplit(
    int color, int key, const CommunicatorOptions& options) {
  // MPI_Comm_split blocks; an all-gather under the timeout first proves every rank is here.
  int* both = reinterpret_cast<int*>(Stage(1, 2 * sizeof(int) * size_t(size())));
  both[2 * rank()] = color;
  both[2 * rank() + 1] = key;
  std::vector<MPI_Request> req(1);
  RESA_MPI_CALL(
      MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, both, 2, MPI_INT, comm_, &req[0]));
  RESA_RETURN_IF_ERROR(Wait(req, "MPI_Iallgather of (color, key)"));
  MPI_Comm child = MPI_COMM_NULL;
  RESA_MPI_CALL(MPI_Comm_split(comm_, color, key, &child));
  RESA_MPI_CALL(MPI_Comm_set_errhandler(child, MPI_ERRORS_RETURN));
  int child_rank = 0, child_size = 0;
  RESA_MPI_CALL(MPI_Comm_rank(child, &child_rank));
  RESA_MPI_CALL(MPI_Comm_size(child, &child_size));
  return std::unique_ptr<Communicator>(
      new MpiCommunicator(runtime_, child, child_rank, child_size, world_rank(), options));
}

}  // namespace resa
