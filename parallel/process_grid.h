// The TP x SP process grid (DESIGN.md §5) as a value type: rank arithmetic, head ownership, and
// the sub-communicators of each TP and SP group.
//
// Layout: world rank = sp_rank * tp + tp_rank, so the ranks of one TP group are consecutive
// (on one host / NVLink domain when launched by node). A TP group shares one sequence shard and
// splits heads and the MLP; an SP group holds the same heads and splits the sequence (page i on
// SP rank i mod sp).
//
// Heads: SplitHeads below is the one rule of the code base (the engine's TpShard uses it too).
// Query heads are split by KV group: with tp <= num_kv_heads, rank r holds KV heads
// [r * Hkv / tp, (r + 1) * Hkv / tp) and all their query heads (uneven when tp does not divide
// Hkv, e.g. SmolLM2's 9 query / 3 KV heads at tp 2: 3 + 6 query heads). With tp > Hkv, each KV
// head is replicated on R = tp / Hkv consecutive ranks (tp must be a multiple of Hkv) that split
// its group of query heads evenly (R must divide the group). Either way the query heads of a rank
// read only the KV heads it holds (head j uses KV head j / group).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace resa {

// The heads one TP rank holds.
struct HeadSplit {
  int head_begin = 0, num_heads = 0;        // query heads [head_begin, head_begin + num_heads)
  int kv_head_begin = 0, num_kv_heads = 0;  // KV heads
  int kv_replicas = 1;                      // ranks holding each KV head (tp / Hkv when tp > Hkv)

  friend bool operator==(const HeadSplit&, const HeadSplit&) = default;
};

// Heads of TP rank `tp_rank` of `tp` (rule above). InvalidArgument naming --tp and the model's
// head counts when the heads do not split; the same error on every rank.
absl::StatusOr<HeadSplit> SplitHeads(int num_heads, int num_kv_heads, int tp_rank, int tp);

class ProcessGrid {
 public:
  // Validates world_size == tp * sp, world_rank in range, and that the heads split (SplitHeads).
  // Errors name the flags (--tp, --sp) and the numbers, and are the same on every rank.
  static absl::StatusOr<ProcessGrid> Create(int world_rank, int world_size, int tp, int sp,
                                            int num_heads, int num_kv_heads);

  int world_rank() const { return world_rank_; }
  int world_size() const { return tp_ * sp_; }
  int tp() const { return tp_; }
  int sp() const { return sp_; }
  int tp_rank() const { return world_rank_ % tp_; }
  int sp_rank() const { return world_rank_ / tp_; }
  // World rank of grid position (tp_rank, sp_rank).
  int WorldRankOf(int tp_rank, int sp_rank) const { return sp_rank * tp_ + tp_rank; }

  int num_heads() const { return num_heads_; }
  int num_kv_heads() const { return num_kv_heads_; }
  // Query heads [first_head(), first_head() + local_heads()) live on this rank.
  int local_heads() const { return heads_.num_heads; }
  int first_head() const { return heads_.head_begin; }
  // KV heads [first_kv_head(), first_kv_head() + local_kv_heads()) live on this rank.
  int local_kv_heads() const { return heads_.num_kv_heads; }
  int first_kv_head() const { return heads_.kv_head_begin; }
  // How many ranks of a TP group hold each KV head (1 unless tp > num_kv_heads).
  int kv_replicas() const { return heads_.kv_replicas; }
  const HeadSplit& heads() const { return heads_; }

  // "tp 2 x sp 2, rank 3 = (tp 1, sp 1), heads [4, 8), kv heads [1, 2)".
  std::string ToString() const;

  friend bool operator==(const ProcessGrid&, const ProcessGrid&) = default;

 private:
  ProcessGrid(int world_rank, int tp, int sp, int num_heads, int num_kv_heads, HeadSplit heads)
      : world_rank_(world_rank),
        tp_(tp),
        sp_(sp),
        num_heads_(num_heads),
        num_kv_heads_(num_kv_heads),
        heads_(heads) {}

  int world_rank_;
  int tp_;
  int sp_;
  int num_heads_;
  int num_kv_heads_;
  HeadSplit heads_;
};

struct GridCommunicators {
  std::unique_ptr<Communicator> tp;  // the ranks sharing this rank's sp_rank, ranked by tp_rank
  std::unique_ptr<Communicator> sp;  // the ranks sharing this rank's tp_rank, ranked by sp_rank
};

// Splits `world` (whose rank and size must match the grid) into this rank's TP and SP groups,
// named "tp" and "sp". Collective over world.
absl::StatusOr<GridCommunicators> BuildGridCommunicators(const ProcessGrid& grid,
                                                         Communicator& world);

}  // namespace resa
