#include "parallel/communicator.h"

#include <unistd.h>

#include <climits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/core/status.h"

namespace resa {

size_t DataTypeSize(DataType type) {
  switch (type) {
    case DataType::kFloat32:
    case DataType::kInt32:
      return 4;
    case DataType::kBFloat16:
      return 2;
    case DataType::kInt64:
      return 8;
    case DataType::kUint8:
      return 1;
  }
  return 0;
}

std::string_view DataTypeName(DataType type) {
  switch (type) {
    case DataType::kFloat32:
      return "float32";
    case DataType::kBFloat16:
      return "bf16";
    case DataType::kInt32:
      return "int32";
    case DataType::kInt64:
      return "int64";
    case DataType::kUint8:
      return "uint8";
  }
  return "?";
}

std::string_view ReduceOpName(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kMax:
      return "max";
  }
  return "?";
}

const std::string& HostName() {
  static const std::string name = [] {
    char buf[HOST_NAME_MAX + 1] = {};
    if (gethostname(buf, sizeof(buf) - 1) != 0) return std::string("unknown-host");
    return std::string(buf);
  }();
  return name;
}

Communicator::Communicator(int rank, int size, int world_rank, CommunicatorOptions options)
    : rank_(rank), size_(size), world_rank_(world_rank), options_(std::move(options)) {}

std::string Communicator::Describe() const {
  return absl::StrCat(AsAbsl(backend()), " '", options_.name, "' rank ", rank_, "/", size_,
                      " (world rank ", world_rank_, ") on host ", HostName());
}

absl::Status Communicator::TimeoutError(std::string_view waiting_for) const {
  return absl::DeadlineExceededError(absl::StrCat(AsAbsl(waiting_for), " did not complete within ",
                                                  absl::FormatDuration(options_.timeout),
                                                  "; a peer skipped the call, hangs or died"));
}

absl::Status Communicator::Fail(const absl::Status& st, std::string_view op, bool breaks) {
  if (st.ok()) return st;
  absl::Status out(st.code(), absl::StrCat(Describe(), ": ", AsAbsl(op), ": ", st.message()));
  if (breaks && broken_.ok()) {
    broken_ = absl::UnavailableError(
        absl::StrCat("communicator unusable after an earlier failure: ", out.message()));
  }
  return out;
}

template <typename NameFn, typename Fn>
absl::Status Communicator::Run(const NameFn& name, Fn&& fn) {
  if (!broken_.ok()) return Fail(broken_, name(), false);
  absl::Status st = fn();
  if (st.ok()) return st;
  return Fail(st, name(), true);
}

absl::Status Communicator::CheckBuffer(const void* p, size_t count, std::string_view what) const {
  if (count > 0 && p == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(AsAbsl(what), " is null with count ", count));
  }
  return absl::OkStatus();
}

absl::Status Communicator::CheckRank(int r, std::string_view what) const {
  if (r < 0 || r >= size_) {
    return absl::InvalidArgumentError(
        absl::StrCat(AsAbsl(what), " ", r, " is outside [0, ", size_, ")"));
  }
  return absl::OkStatus();
}

namespace {
std::string OpName(std::string_view op, DataType type, size_t count) {
  return absl::StrCat(AsAbsl(op), "(", AsAbsl(DataTypeName(type)), " x ", count);
}
}  // namespace

absl::Status Communicator::AllReduce(DataType type, ReduceOp op, void* data, size_t count,
                                     void* stream) {
  auto name = [&] {
    return absl::StrCat(OpName("AllReduce", type, count), ", ", AsAbsl(ReduceOpName(op)), ")");
  };
  if (absl::Status st = CheckBuffer(data, count, "data"); !st.ok()) {
    return Fail(st, name(), false);
  }
  return Run(name, [&] { return DoAllReduce(type, op, data, count, stream); });
}

absl::Status Communicator::AllGather(DataType type, const void* send, void* recv, size_t count,
                                     void* stream) {
  auto name = [&] { return absl::StrCat(OpName("AllGather", type, count), ")"); };
  absl::Status st = CheckBuffer(send, count, "send");
  if (st.ok()) st = CheckBuffer(recv, count, "recv");
  if (st.ok() && count > 0 && buffer_location() == BufferLocation::kHost) {
    const auto* s = static_cast<const char*>(send);
    const auto* r = static_cast<const char*>(recv);
    const size_t bytes = count * DataTypeSize(type);
    if (s < r + bytes * size_t(size_) && r < s + bytes) {
      st = absl::InvalidArgumentError("send overlaps recv");
    }
  }
  if (!st.ok()) return Fail(st, name(), false);
  return Run(name, [&] { return DoAllGather(type, send, recv, count, stream); });
}

absl::Status Communicator::Broadcast(DataType type, void* data, size_t count, int root,
                                     void* stream) {
  auto name = [&] { return absl::StrCat(OpName("Broadcast", type, count), ", root ", root, ")"); };
  absl::Status st = CheckBuffer(data, count, "data");
  if (st.ok()) st = CheckRank(root, "root");
  if (!st.ok()) return Fail(st, name(), false);
  return Run(name, [&] { return DoBroadcast(type, data, count, root, stream); });
}

absl::Status Communicator::Barrier() {
  return Run([] { return std::string("Barrier()"); }, [&] { return DoBarrier(); });
}

absl::Status Communicator::Send(DataType type, const void* data, size_t count, int peer,
                                void* stream) {
  auto name = [&] { return absl::StrCat(OpName("Send", type, count), ", to rank ", peer, ")"); };
  absl::Status st = CheckBuffer(data, count, "data");
  if (st.ok()) st = CheckRank(peer, "peer");
  if (st.ok() && peer == rank_) st = absl::InvalidArgumentError("cannot send to itself");
  if (!st.ok()) return Fail(st, name(), false);
  return Run(name, [&] { return DoSend(type, data, count, peer, stream); });
}

absl::Status Communicator::Recv(DataType type, void* data, size_t count, int peer, void* stream) {
  auto name = [&] { return absl::StrCat(OpName("Recv", type, count), ", from rank ", peer, ")"); };
  absl::Status st = CheckBuffer(data, count, "data");
  if (st.ok()) st = CheckRank(peer, "peer");
  if (st.ok() && peer == rank_) st = absl::InvalidArgumentError("cannot receive from itself");
  if (!st.ok()) return Fail(st, name(), false);
  return Run(name, [&] { return DoRecv(type, data, count, peer, stream); });
}

absl::Status Communicator::SendRecv(DataType type, const void* send, size_t send_count, int dst,
                                    void* recv, size_t recv_count, int src, void* stream) {
  auto name = [&] {
    return absl::StrCat("SendRecv(", AsAbsl(DataTypeName(type)), " x ", send_count, " to rank ",
                        dst, ", x ", recv_count, " from rank ", src, ")");
  };
  absl::Status st = CheckBuffer(send, send_count, "send");
  if (st.ok()) st = CheckBuffer(recv, recv_count, "recv");
  if (st.ok()) st = CheckRank(dst, "dst");
  if (st.ok()) st = CheckRank(src, "src");
  if (st.ok() && (dst == rank_ || src == rank_)) {
    st = absl::InvalidArgumentError("cannot exchange with itself");
  }
  if (!st.ok()) return Fail(st, name(), false);
  return Run(
      name, [&] { return DoSendRecv(type, send, send_count, dst, recv, recv_count, src, stream); });
}

absl::Status Communicator::Synchronize(void* stream) {
  return Run([] { return std::string("Synchronize(stream)"); },
             [&] { return DoSynchronize(stream); });
}

absl::StatusOr<std::unique_ptr<Communicator>> Communicator::Split(int color, int key,
                                                                  std::string_view name) {
  const std::string op = absl::StrCat("Split(color ", color, ", key ", key, ")");
  if (color < 0) {
    return Fail(absl::InvalidArgumentError("color must be >= 0"), op, false);
  }
  if (!broken_.ok()) return Fail(broken_, op, false);
  CommunicatorOptions child = options_;
  child.name = name.empty() ? absl::StrCat(options_.name, "/", color) : std::string(name);
  absl::StatusOr<std::unique_ptr<Communicator>> out = DoSplit(color, key, child);
  if (!out.ok()) return Fail(out.status(), op, true);
  return out;
}

}  // namespace resa
