#include "parallel/counting_communicator.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/core/status.h"
#include "runtime/core/sysinfo.h"

namespace resa {

std::string_view CommOpName(CommOp op) {
  switch (op) {
    case CommOp::kAllReduce:
      return "allreduce";
    case CommOp::kAllGather:
      return "allgather";
    case CommOp::kBroadcast:
      return "broadcast";
    case CommOp::kBarrier:
      return "barrier";
    case CommOp::kSend:
      return "send";
    case CommOp::kRecv:
      return "recv";
    case CommOp::kSendRecv:
      return "sendrecv";
  }
  return "?";
}

std::unique_ptr<CountingCommunicator> CountingCommunicator::Wrap(
    std::unique_ptr<Communicator> inner) {
  return std::unique_ptr<CountingCommunicator>(new CountingCommunicator(std::move(inner)));
}

CountingCommunicator::CountingCommunicator(std::unique_ptr<Communicator> inner)
    : Communicator(inner->rank(), inner->size(), inner->world_rank(), inner->options()),
      inner_(std::move(inner)) {}

CommOpStats CountingCommunicator::Total(CommOp op) const {
  CommOpStats total;
  for (const auto& [key, stats] : counts_) {
    if (key.op == op) total += stats;
  }
  return total;
}

template <typename Fn>
absl::Status CountingCommunicator::Forward(CommOp op, DataType type, uint64_t payload,
                                           uint64_t ring, Fn&& fn) {
  inner_->set_timeout(timeout());
  if (!inner_->broken_.ok()) return inner_->broken_;
  Stopwatch sw;
  absl::Status st = fn(*inner_);
  CommOpStats& s = counts_[CommKey{op, type}];
  s.calls += 1;
  s.seconds += sw.Seconds();
  s.payload_bytes += payload;
  s.ring_bytes += ring;
  if (!st.ok()) {
    inner_->broken_ = absl::UnavailableError(
        absl::StrCat("communicator unusable after an earlier failure: ", st.message()));
  }
  return st;
}

absl::Status CountingCommunicator::DoAllReduce(DataType type, ReduceOp op, void* data,
                                               size_t count, void* stream) {
  const uint64_t bytes = count * DataTypeSize(type);
  const uint64_t ring = size() > 1 ? 2 * bytes * uint64_t(size() - 1) / uint64_t(size()) : 0;
  return Forward(CommOp::kAllReduce, type, bytes, ring, [&](Communicator& c) {
    return c.DoAllReduce(type, op, data, count, stream);
  });
}

absl::Status CountingCommunicator::DoAllGather(DataType type, const void* send, void* recv,
                                               size_t count, void* stream) {
  const uint64_t bytes = count * DataTypeSize(type);
  return Forward(CommOp::kAllGather, type, bytes, bytes * uint64_t(size() - 1),
                 [&](Communicator& c) { return c.DoAllGather(type, send, recv, count, stream); });
}

absl::Status CountingCommunicator::DoBroadcast(DataType type, void* data, size_t count, int root,
                                               void* stream) {
  const uint64_t bytes = count * DataTypeSize(type);
  // A ring from the root: every rank forwards the data except the one just before the root.
  const bool last = (rank() + 1) % size() == root;
  return Forward(CommOp::kBroadcast, type, rank() == root ? bytes : 0,
                 size() > 1 && !last ? bytes : 0,
                 [&](Communicator& c) { return c.DoBroadcast(type, data, count, root, stream); });
}

absl::Status CountingCommunicator::DoBarrier() {
  return Forward(CommOp::kBarrier, DataType::kUint8, 0, 0,
                 [](Communicator& c) { return c.DoBarrier(); });
}

absl::Status CountingCommunicator::DoSend(DataType type, const void* data, size_t count, int peer,
                                          void* stream) {
  const uint64_t bytes = count * DataTypeSize(type);
  return Forward(CommOp::kSend, type, bytes, bytes,
                 [&](Communicator& c) { return c.DoSend(type, data, count, peer, stream); });
}

absl::Status CountingCommunicator::DoRecv(DataType type, void* data, size_t count, int peer,
                                          void* stream) {
  return Forward(CommOp::kRecv, type, 0, 0,
                 [&](Communicator& c) { return c.DoRecv(type, data, count, peer, stream); });
}

absl::Status CountingCommunicator::DoSendRecv(DataType type, const void* send, size_t send_count,
                                              int dst, void* recv, size_t recv_count, int src,
                                              void* stream) {
  const uint64_t bytes = send_count * DataTypeSize(type);
  return Forward(CommOp::kSendRecv, type, bytes, bytes, [&](Communicator& c) {
    return c.DoSendRecv(type, send, send_count, dst, recv, recv_count, src, stream);
  });
}

absl::Status CountingCommunicator::DoSynchronize(void* stream) {
  inner_->set_timeout(timeout());
  if (!inner_->broken_.ok()) return inner_->broken_;
  absl::Status st = inner_->DoSynchronize(stream);
  if (!st.ok()) {
    inner_->broken_ = absl::UnavailableError(
        absl::StrCat("communicator unusable after an earlier failure: ", st.message()));
  }
  return st;
}

absl::StatusOr<std::unique_ptr<Communicator>> CountingCommunicator::DoSplit(
    int color, int key, const CommunicatorOptions& options) {
  inner_->set_timeout(timeout());
  if (!inner_->broken_.ok()) return inner_->broken_;
  absl::StatusOr<std::unique_ptr<Communicator>> child = inner_->DoSplit(color, key, options);
  if (!child.ok()) {
    inner_->broken_ = absl::UnavailableError(absl::StrCat(
        "communicator unusable after an earlier failure: ", child.status().message()));
    return child.status();
  }
  return std::unique_ptr<Communicator>(Wrap(std::move(*child)));
}

std::string FormatCommCounts(const CommCounts& counts) {
  std::string out;
  for (const auto& [key, s] : counts) {
    absl::StrAppend(&out,
                    absl::StrFormat("%s %s: %d calls, %.3f ms, %.1f KB payload, %.1f KB on the "
                                    "wire (ring)\n",
                                    AsAbsl(CommOpName(key.op)), AsAbsl(DataTypeName(key.type)),
                                    s.calls, s.seconds * 1e3, s.payload_bytes / 1e3,
                                    s.ring_bytes / 1e3));
  }
  return out;
}

}  // namespace resa
