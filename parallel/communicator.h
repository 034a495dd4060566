// Communicator: the few collective and point-to-point operations the runtime needs, behind one
// interface with three implementations (DESIGN.md §5): MPI (host buffers; also the bootstrap of
// NCCL), NCCL (device buffers, stream-ordered) and an in-process fake (threads, for unit tests).
// Create them through communicator_factory.h; one conformance suite
// (parallel/testing/communicator_conformance.h) runs against all of them.
//
// Contracts shared by every implementation:
// - One thread at a time per Communicator object (different objects may be used concurrently).
// - Collectives are called by every rank of the group in the same order with the same type,
//   count, op and root; point-to-point calls pair up in the order they are issued.
// - Buffers live where buffer_location() says: host memory (fake, MPI) or device memory of the
//   communicator's GPU (NCCL). `stream` is an opaque cudaStream_t. A null stream means "complete
//   before returning" on every backend. Host backends ignore a non-null stream and also complete
//   before returning; the NCCL backend only enqueues the work on a non-null stream, and
//   Synchronize(stream) then waits for it under the timeout.
// - Every wait is bounded by timeout(): an operation that cannot complete because a peer skipped
//   it, hangs or died fails with DeadlineExceeded (or Unavailable when the backend knows the peer
//   is gone), never hangs. Error messages name the backend, communicator, rank/size, world rank,
//   host and the operation.
// - Argument errors (bad root, peer, null buffer) are found before anything is posted and leave
//   the communicator usable. Any other failure may leave the group inconsistent, so it breaks the
//   communicator: later calls fail with Unavailable carrying the first error. The process should
//   then report the error and exit; buffers of abandoned operations are kept alive internally so a
//   late peer never writes into caller memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace resa {

enum class DataType : uint8_t { kFloat32, kBFloat16, kInt32, kInt64, kUint8 };
enum class ReduceOp : uint8_t { kSum, kMax };
enum class BufferLocation : uint8_t { kHost, kDevice };

size_t DataTypeSize(DataType type);
std::string_view DataTypeName(DataType type);
std::string_view ReduceOpName(ReduceOp op);

// The DataType of a C++ element type (bf16 has no portable C++ type: use the enum directly).
template <typename T>
constexpr DataType DataTypeOf();
template <>
constexpr DataType DataTypeOf<float>() {
  return DataType::kFloat32;
}
template <>
constexpr DataType DataTypeOf<int32_t>() {
  return DataType::kInt32;
}
template <>
constexpr DataType DataTypeOf<int64_t>() {
  return DataType::kInt64;
}
template <>
constexpr DataType DataTypeOf<uint8_t>() {
  return DataType::kUint8;
}

struct CommunicatorOptions {
  // Longest wait of one operation (collective, send, recv, split, Synchronize, creation).
  absl::Duration timeout = absl::Seconds(30);
  // Shown in error messages ("world", "tp", "sp").
  std::string name = "world";
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  // Rank in the world this communicator was split from (equals rank() for a world).
  int world_rank() const { return world_rank_; }
  const std::string& name() const { return options_.name; }
  absl::Duration timeout() const { return options_.timeout; }
  // Applies to later operations (e.g. longer while peers load weights). Must be > 0.
  void set_timeout(absl::Duration timeout) { options_.timeout = timeout; }
  // OK, or the Unavailable error later calls will return after a failure broke this communicator.
  const absl::Status& health() const { return broken_; }

  virtual std::string_view backend() const = 0;  // "fake", "mpi", "nccl"
  virtual BufferLocation buffer_location() const = 0;

  // In place: data[i] = op over ranks of data[i], for i < count. Float sums are identical on
  // every rank (the fake sums in rank order). bf16 reductions: fake and NCCL only.
  absl::Status AllReduce(DataType type, ReduceOp op, void* data, size_t count,
                         void* stream = nullptr);
  // recv[r * count + i] = send[i] of rank r; recv holds size() * count elements and must not
  // overlap send.
  absl::Status AllGather(DataType type, const void* send, void* recv, size_t count,
                         void* stream = nullptr);
  // data of rank `root` is copied to every rank's data.
  absl::Status Broadcast(DataType type, void* data, size_t count, int root, void* stream = nullptr);
  // Returns once every rank has called Barrier (host-blocking on every backend).
  absl::Status Barrier();
  // Point to point; count and type must match the peer's Recv. Send may return before the
  // matching Recv is posted, or wait for it: never Send to a peer that is itself sending to you
  // without SendRecv.
  absl::Status Send(DataType type, const void* data, size_t count, int peer,
                    void* stream = nullptr);
  absl::Status Recv(DataType type, void* data, size_t count, int peer, void* stream = nullptr);
  // Sends to `dst` and receives from `src` at the same time (deadlock-free ring exchanges).
  absl::Status SendRecv(DataType type, const void* send, size_t send_count, int dst, void* recv,
                        size_t recv_count, int src, void* stream = nullptr);
  // Waits for the work this communicator enqueued on `stream` (no-op on host backends).
  absl::Status Synchronize(void* stream);
  // Collective: ranks with the same color (>= 0) form a new communicator, ranked by (key, rank).
  // It inherits the timeout; `name` (default: "<name>/<color>") labels its errors.
  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key,
                                                      std::string_view name = {});

  // Typed conveniences over the calls above.
  template <typename T>
  absl::Status AllReduce(std::span<T> data, ReduceOp op = ReduceOp::kSum) {
    return AllReduce(DataTypeOf<T>(), op, data.data(), data.size());
  }
  template <typename T>
  absl::Status AllGather(std::span<const T> send, std::span<T> recv) {
    if (recv.size() != send.size() * size_t(size())) {
      return Fail(absl::InvalidArgumentError("recv must hold size() * send.size() elements"),
                  "AllGather", false);
    }
    return AllGather(DataTypeOf<T>(), send.data(), recv.data(), send.size());
  }
  template <typename T>
  absl::Status Broadcast(std::span<T> data, int root) {
    return Broadcast(DataTypeOf<T>(), data.data(), data.size(), root);
  }

  // "mpi 'tp' rank 1/2 (world rank 3) on host n07": the prefix of every error message.
  std::string Describe() const;

 protected:
  Communicator(int rank, int size, int world_rank, CommunicatorOptions options);

  // Implementations see validated arguments (pointers non-null when count > 0, root/peers in
  // range and != rank() for point to point, recv sized by the caller's contract), and return
  // errors without context: the public wrappers add Describe() and the operation.
  virtual absl::Status DoAllReduce(DataType type, ReduceOp op, void* data, size_t count,
                                   void* stream) = 0;
  virtual absl::Status DoAllGather(DataType type, const void* send, void* recv, size_t count,
                                   void* stream) = 0;
  virtual absl::Status DoBroadcast(DataType type, void* data, size_t count, int root,
                                   void* stream) = 0;
  virtual absl::Status DoBarrier() = 0;
  virtual absl::Status DoSend(DataType type, const void* data, size_t count, int peer,
                              void* stream) = 0;
  virtual absl::Status DoRecv(DataType type, void* data, size_t count, int peer, void* stream) = 0;
  virtual absl::Status DoSendRecv(DataType type, const void* send, size_t send_count, int dst,
                                  void* recv, size_t recv_count, int src, void* stream) = 0;
  virtual absl::Status DoSynchronize(void* stream) = 0;
  // `options` is the child's (inherited timeout, its name).
  virtual absl::StatusOr<std::unique_ptr<Communicator>> DoSplit(
      int color, int key, const CommunicatorOptions& options) = 0;

  const CommunicatorOptions& options() const { return options_; }
  // Deadline of an operation that starts now.
  absl::Time Deadline() const { return absl::Now() + options_.timeout; }
  // "did not complete within 30s; a peer skipped the call, hangs or died": the common wording of
  // a timeout, for implementations.
  absl::Status TimeoutError(std::string_view waiting_for) const;

 private:
  // Adds context to a failure of `op`; when `breaks` it also marks the communicator broken.
  absl::Status Fail(const absl::Status& st, std::string_view op, bool breaks);
  // Runs a validated operation: fails fast when broken, annotates and records failures. name()
  // describes the operation; it is called only on failure (no string work on the hot path).
  template <typename NameFn, typename Fn>
  absl::Status Run(const NameFn& name, Fn&& fn);
  absl::Status CheckBuffer(const void* p, size_t count, std::string_view what) const;
  absl::Status CheckRank(int r, std::string_view what) const;

  // The decorator (counting_communicator.h) forwards to its wrapped communicator's Do* calls
  // directly (arguments already validated, errors annotated once) and breaks it on failure.
  friend class CountingCommunicator;

  int rank_;
  int size_;
  int world_rank_;
  CommunicatorOptions options_;
  absl::Status broken_;
};

// Host name of this process (cached), for error messages.
const std::string& HostName();

}  // namespace resa
