// CountingCommunicator: a decorator over any Communicator that forwards every operation
// unchanged and records, per operation kind and data type, the calls, the wall time spent inside
// them and the bytes moved. For benchmarks (resa-bench comm) and tests that bound traffic: the
// model code is unchanged, the counts come from wrapping the world before the grid splits it
// (Split returns counting children, each with its own counts).
//
// Contracts:
// - Behaviour is the wrapped communicator's: same results, validation, timeouts (set_timeout on
//   the wrapper applies to the wrapped one), errors worded identically (the wrapper describes
//   itself with the wrapped backend's name), and a failure breaks both.
// - Time is host wall time from the call to its return: on host backends the whole operation,
//   including waiting for late peers; on NCCL with a non-null stream only the enqueue
//   (Synchronize is forwarded but not counted: time the stream with events instead).
// - Bytes: `payload_bytes` is what this rank contributes (AllReduce, AllGather and Send: its
//   count x element size; Broadcast: the count at the root, 0 elsewhere; SendRecv: its send
//   count; Recv, Barrier: 0). `ring_bytes` is what this rank sends on the wire under ring
//   algorithms (NCCL's default for these sizes): AllReduce 2 (S-1)/S x payload, AllGather
//   (S-1) x payload, Broadcast the count on every rank but the ring's last, Send its payload.
// - One thread at a time, like every Communicator: the counts are not synchronised.
#pragma once

#include <compare>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace resa {

enum class CommOp : uint8_t { kAllReduce, kAllGather, kBroadcast, kBarrier, kSend, kRecv, kSendRecv };
std::string_view CommOpName(CommOp op);

struct CommKey {
  CommOp op = CommOp::kBarrier;
  DataType type = DataType::kUint8;
  friend auto operator<=>(const CommKey&, const CommKey&) = default;
};

struct CommOpStats {
  int64_t calls = 0;
  double seconds = 0.0;
  uint64_t payload_bytes = 0;
  uint64_t ring_bytes = 0;

  CommOpStats& operator+=(const CommOpStats& o) {
    calls += o.calls;
    seconds += o.seconds;
    payload_bytes += o.payload_bytes;
    ring_bytes += o.ring_bytes;
    return *this;
  }
};

using CommCounts = std::map<CommKey, CommOpStats>;

class CountingCommunicator final : public Communicator {
 public:
  // Takes ownership of `inner` (non-null); rank, size, world rank and options are its own.
  static std::unique_ptr<CountingCommunicator> Wrap(std::unique_ptr<Communicator> inner);

  std::string_view backend() const override { return inner_->backend(); }
  BufferLocation buffer_location() const override { return inner_->buffer_location(); }

  const CommCounts& counts() const { return counts_; }
  // Sum over data types of one operation kind.
  CommOpStats Total(CommOp op) const;
  void ResetCounts() { counts_.clear(); }
  Communicator& inner() { return *inner_; }

 private:
  explicit CountingCommunicator(std::unique_ptr<Communicator> inner);

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

  // Runs fn on the wrapped communicator (with this wrapper's timeout), timing it into
  // counts_[{op, type}]; a failure also breaks the wrapped communicator.
  template <typename Fn>
  absl::Status Forward(CommOp op, DataType type, uint64_t payload, uint64_t ring, Fn&& fn);

  std::unique_ptr<Communicator> inner_;
  CommCounts counts_;
};

// "allgather int32: 28 calls, 1.2 ms, 52.1 KB payload, 52.1 KB on the wire" lines, one per key.
std::string FormatCommCounts(const CommCounts& counts);

}  // namespace resa
