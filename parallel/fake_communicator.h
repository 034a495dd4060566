// In-process fake communicator: N ranks are N Communicator objects sharing one rendezvous, each
// used by its own thread. For unit tests of everything above the Communicator interface; it
// behaves like the real backends (same validation, timeouts, broken state) and checks more:
// - collectives called in a different order or with different type/count/op/root on different
//   ranks fail with InvalidArgument naming both calls;
// - a timeout names the ranks that never arrived;
// - destroying a rank's communicator is "the peer died": ranks waiting on it fail with
//   Unavailable naming it.
// Contributions are copied into the rendezvous on arrival, so a rank that timed out never has its
// buffers read later. Reductions run in rank order (float sums are exact for small integers and
// identical on every rank); bf16 reductions accumulate in float and round once (nearest even).
// Send copies into a mailbox and returns at once.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace resa {

namespace fake_internal {
struct Group;
}  // namespace fake_internal

class FakeCommunicator final : public Communicator {
 public:
  // Ranks 0..n-1 of one new group, all with `options`. n >= 1.
  static absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> CreateGroup(
      int n, const CommunicatorOptions& options);

  ~FakeCommunicator() override;

  std::string_view backend() const override { return "fake"; }
  BufferLocation buffer_location() const override { return BufferLocation::kHost; }

 private:
  struct Call;
  FakeCommunicator(std::shared_ptr<fake_internal::Group> group, int rank, int world_rank,
                   CommunicatorOptions options);

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

  // Joins collective number seq_: deposits `mine`, waits for every rank, checks that all called
  // the same thing, and copies every rank's contribution into *all. For Split, also returns the
  // child group of `color` (created by the first rank through).
  absl::Status Rendezvous(const Call& call, const void* mine, size_t bytes,
                          std::vector<std::vector<unsigned char>>* all, int split_color = -1,
                          std::shared_ptr<fake_internal::Group>* child = nullptr);

  std::shared_ptr<fake_internal::Group> group_;
  uint64_t seq_ = 0;
};

}  // namespace resa
