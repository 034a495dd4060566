#include "parallel/fake_communicator.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/core/status.h"

namespace resa {

using Bytes = std::vector<unsigned char>;

namespace fake_internal {

// One collective in flight: what each rank called and contributed.
struct Slot {
  explicit Slot(int n) : calls(n), data(n), arrived(n, false) {}
  std::vector<std::string> calls;  // description of each rank's call, for mismatch errors
  std::vector<Bytes> data;
  std::vector<bool> arrived;
  int num_arrived = 0;
  int num_done = 0;
  std::map<int, std::shared_ptr<Group>> children;  // Split: the new group of each color
};

struct Group {
  explicit Group(int n) : size(n), gone(n, false) {}
  const int size;
  std::mutex mu;
  std::condition_variable cv;
  std::vector<bool> gone;                                 // rank's communicator destroyed
  std::map<uint64_t, Slot> slots;                         // by collective sequence number
  std::map<std::pair<int, int>, std::deque<Bytes>> mail;  // (src, dst) -> messages in order
};

}  // namespace fake_internal

using fake_internal::Group;
using fake_internal::Slot;

struct FakeCommunicator::Call {
  std::string what;  // "AllReduce(float32 x 4, sum)": must be equal on every rank
};

namespace {

using Clock = std::chrono::steady_clock;

float Bf16ToFloat(uint16_t v) {
  const uint32_t bits = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t FloatToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest even
  return uint16_t(bits >> 16);
}

template <typename T, typename Acc>
void ReduceInto(const std::vector<Bytes>& all, ReduceOp op, void* out, size_t count) {
  T* o = static_cast<T*>(out);
  for (size_t i = 0; i < count; ++i) {
    Acc acc{};
    for (size_t r = 0; r < all.size(); ++r) {
      T v;
      std::memcpy(&v, all[r].data() + i * sizeof(T), sizeof(T));
      if (op == ReduceOp::kMax) {
        acc = r == 0 ? Acc(v) : std::max(acc, Acc(v));
      } else {
        acc = r == 0 ? Acc(v) : Acc(acc + Acc(v));
      }
    }
    o[i] = T(acc);
  }
}

// Integer sums wrap like NCCL's and MPI's instead of overflowing (undefined in C++).
template <typename T, typename U>
void ReduceIntInto(const std::vector<Bytes>& all, ReduceOp op, void* out, size_t count) {
  if (op == ReduceOp::kMax) return ReduceInto<T, T>(all, op, out, count);
  T* o = static_cast<T*>(out);
  for (size_t i = 0; i < count; ++i) {
    U acc = 0;
    for (const Bytes& b : all) {
      T v;
      std::memcpy(&v, b.data() + i * sizeof(T), sizeof(T));
      acc = U(acc + U(v));
    }
    o[i] = T(acc);
  }
}

void ReduceBf16Into(const std::vector<Bytes>& all, ReduceOp op, void* out, size_t count) {
  uint16_t* o = static_cast<uint16_t*>(out);
  for (size_t i = 0; i < count; ++i) {
    float acc = 0.0f;
    for (size_t r = 0; r < all.size(); ++r) {
      uint16_t v;
      std::memcpy(&v, all[r].data() + i * 2, 2);
      const float f = Bf16ToFloat(v);
      acc = r == 0 ? f : (op == ReduceOp::kMax ? std::max(acc, f) : acc + f);
    }
    o[i] = FloatToBf16(acc);
  }
}

}  // namespace

absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> FakeCommunicator::CreateGroup(
    int n, const CommunicatorOptions& options) {
  if (n < 1) return absl::InvalidArgumentError(absl::StrCat("fake group of ", n, " ranks"));
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("communicator timeout must be > 0");
  }
  auto group = std::make_shared<Group>(n);
  std::vector<std::unique_ptr<Communicator>> out;
  for (int r = 0; r < n; ++r) {
    out.push_back(std::unique_ptr<Communicator>(new FakeCommunicator(group, r, r, options)));
  }
  return out;
}

FakeCommunicator::FakeCommunicator(std::shared_ptr<Group> group, int rank, int world_rank,
                                   CommunicatorOptions options)
    : Communicator(rank, group->size, world_rank, std::move(options)), group_(std::move(group)) {}

FakeCommunicator::~FakeCommunicator() {
  std::lock_guard<std::mutex> lock(group_->mu);
  group_->gone[rank()] = true;
  group_->cv.notify_all();
}

absl::Status FakeCommunicator::Rendezvous(const Call& call, const void* mine, size_t bytes,
                                          std::vector<Bytes>* all, int split_color,
                                          std::shared_ptr<Group>* child) {
  Group& g = *group_;
  const uint64_t seq = seq_++;
  const auto deadline = Clock::now() + absl::ToChronoNanoseconds(timeout());
  std::unique_lock<std::mutex> lock(g.mu);
  Slot& slot = g.slots.try_emplace(seq, g.size).first->second;
  slot.calls[rank()] = call.what;
  slot.data[rank()].assign(static_cast<const unsigned char*>(mine),
                           static_cast<const unsigned char*>(mine) + bytes);
  slot.arrived[rank()] = true;
  ++slot.num_arrived;
  g.cv.notify_all();
  // Waits until every rank arrived, a missing rank is gone, or the deadline passes.
  std::vector<int> missing;
  for (;;) {
    missing.clear();
    bool dead = false;
    for (int r = 0; r < g.size; ++r) {
      if (!slot.arrived[r]) {
        missing.push_back(r);
        dead = dead || g.gone[r];
      }
    }
    if (missing.empty()) break;
    if (dead) {
      std::vector<int> lost;
      for (int r : missing) {
        if (g.gone[r]) lost.push_back(r);
      }
      return absl::UnavailableError(
          absl::StrCat("peer rank(s) ", absl::StrJoin(lost, ", "),
                       " left the group (communicator destroyed) without joining this collective"));
    }
    if (Clock::now() >= deadline) {
      return TimeoutError(absl::StrCat(
          call.what, " (ranks that never arrived: ", absl::StrJoin(missing, ", "), ")"));
    }
    g.cv.wait_until(lock, deadline);
  }
  absl::Status st;
  for (int r = 0; r < g.size && st.ok(); ++r) {
    if (slot.calls[r] != call.what) {
      st = absl::InvalidArgumentError(absl::StrCat("collective mismatch: rank ", r, " called ",
                                                   slot.calls[r], " as its call number ", seq,
                                                   ", this rank called ", call.what));
    }
  }
  if (st.ok()) {
    if (all != nullptr) *all = slot.data;
    if (child != nullptr) {
      std::shared_ptr<Group>& c = slot.children[split_color];
      if (c == nullptr) {
        int members = 0;
        for (const Bytes& b : slot.data) {
          int color;
          std::memcpy(&color, b.data(), sizeof(int));
          members += color == split_color;
        }
        c = std::make_shared<Group>(members);
      }
      *child = c;
    }
  }
  if (++slot.num_done == g.size) g.slots.erase(seq);
  return st;
}

absl::Status FakeCommunicator::DoAllReduce(DataType type, ReduceOp op, void* data, size_t count,
                                           void*) {
  const Call call{absl::StrCat("AllReduce(", AsAbsl(DataTypeName(type)), " x ", count, ", ",
                               AsAbsl(ReduceOpName(op)), ")")};
  std::vector<Bytes> all;
  RESA_RETURN_IF_ERROR(Rendezvous(call, data, count * DataTypeSize(type), &all));
  switch (type) {
    case DataType::kFloat32:
      ReduceInto<float, float>(all, op, data, count);
      break;
    case DataType::kBFloat16:
      ReduceBf16Into(all, op, data, count);
      break;
    case DataType::kInt32:
      ReduceIntInto<int32_t, uint32_t>(all, op, data, count);
      break;
    case DataType::kInt64:
      ReduceIntInto<int64_t, uint64_t>(all, op, data, count);
      break;
    case DataType::kUint8:
      ReduceIntInto<uint8_t, uint8_t>(all, op, data, count);
      break;
  }
  return absl::OkStatus();
}

absl::Status FakeCommunicator::DoAllGather(DataType type, const void* send, void* recv,
                                           size_t count, void*) {
  const Call call{absl::StrCat("AllGather(", AsAbsl(DataTypeName(type)), " x ", count, ")")};
  const size_t bytes = count * DataTypeSize(type);
  std::vector<Bytes> all;
  RESA_RETURN_IF_ERROR(Rendezvous(call, send, bytes, &all));
  for (size_t r = 0; r < all.size(); ++r) {
    if (bytes > 0) std::memcpy(static_cast<unsigned char*>(recv) + r * bytes, all[r].data(), bytes);
  }
  return absl::OkStatus();
}

absl::Status FakeCommunicator::DoBroadcast(DataType type, void* data, size_t count, int root,
                                           void*) {
  const Call call{
      absl::StrCat("Broadcast(", AsAbsl(DataTypeName(type)), " x ", count, ", root ", root, ")")};
  const size_t bytes = count * DataTypeSize(type);
  std::vector<Bytes> all;
  RESA_RETURN_IF_ERROR(Rendezvous(call, data, rank() == root ? bytes : 0, &all));
  if (rank() != root && bytes > 0) std::memcpy(data, all[root].data(), bytes);
  return absl::OkStatus();
}

absl::Status FakeCommunicator::DoBarrier() {
  return Rendezvous(Call{"Barrier()"}, nullptr, 0, nullptr);
}

absl::Status FakeCommunicator::DoSend(DataType type, const void* data, size_t count, int peer,
                                      void*) {
  const auto* p = static_cast<const unsigned char*>(data);
  std::lock_guard<std::mutex> lock(group_->mu);
  if (group_->gone[peer]) {
    return absl::UnavailableError(
        absl::StrCat("peer rank ", peer, " left the group (communicator destroyed)"));
  }
  group_->mail[{rank(), peer}].emplace_back(p, p + count * DataTypeSize(type));
  group_->cv.notify_all();
  return absl::OkStatus();
}

absl::Status FakeCommunicator::DoRecv(DataType type, void* data, size_t count, int peer, void*) {
  Group& g = *group_;
  const auto deadline = Clock::now() + absl::ToChronoNanoseconds(timeout());
  std::unique_lock<std::mutex> lock(g.mu);
  std::deque<Bytes>& box = g.mail[{peer, rank()}];
  while (box.empty()) {
    if (g.gone[peer]) {
      return absl::UnavailableError(absl::StrCat(
          "peer rank ", peer, " left the group (communicator destroyed) without sending"));
    }
    if (Clock::now() >= deadline) return TimeoutError(absl::StrCat("receive from rank ", peer));
    g.cv.wait_until(lock, deadline);
  }
  Bytes msg = std::move(box.front());
  box.pop_front();
  const size_t bytes = count * DataTypeSize(type);
  if (msg.size() != bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", peer, " sent ", msg.size(), " bytes, this rank expected ", bytes));
  }
  if (bytes > 0) std::memcpy(data, msg.data(), bytes);
  return absl::OkStatus();
}

absl::Status FakeCommunicator::DoSendRecv(DataType type, const void* send, size_t send_count,
                                          int dst, void* recv, size_t recv_count, int src,
                                          void* stream) {
  RESA_RETURN_IF_ERROR(DoSend(type, send, send_count, dst, stream));
  return DoRecv(type, recv, recv_count, src, stream);
}

absl::StatusOr<std::unique_ptr<Communicator>> FakeCommunicator::DoSplit(
    int color, int key, const CommunicatorOptions& options) {
  const int mine[2] = {color, key};
  std::vector<Bytes> all;
  std::shared_ptr<Group> child;
  RESA_RETURN_IF_ERROR(Rendezvous(Call{"Split()"}, mine, sizeof(mine), &all, color, &child));
  // New rank: position of (key, old rank) among the ranks of this color.
  int new_rank = 0;
  for (int r = 0; r < int(all.size()); ++r) {
    int theirs[2];
    std::memcpy(theirs, all[r].data(), sizeof(theirs));
    if (theirs[0] == color && (theirs[1] < key || (theirs[1] == key && r < rank()))) ++new_rank;
  }
  return std::unique_ptr<Communicator>(
      new FakeCommunicator(std::move(child), new_rank, world_rank(), options));
}

}  // namespace resa
