#include "parallel/process_grid.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "runtime/core/status.h"

namespace resa {

namespace {
int SplitBegin(int n, int rank, int size) { return int(int64_t(n) * rank / size); }
}  // namespace

absl::StatusOr<HeadSplit> SplitHeads(int num_heads, int num_kv_heads, int tp_rank, int tp) {
  const int nh = num_heads, nkv = num_kv_heads;
  if (tp < 1) return absl::InvalidArgumentError(absl::StrCat("--tp ", tp, " must be >= 1"));
  if (tp_rank < 0 || tp_rank >= tp) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tp ", tp, ": rank ", tp_rank, " is outside the group"));
  }
  if (nh < 1 || nkv < 1 || nh % nkv != 0) {
    return absl::InvalidArgumentError(absl::StrCat("model has ", nh, " query heads and ", nkv,
                                                   " KV heads; KV heads must divide query heads"));
  }
  const int g = nh / nkv;
  HeadSplit s;
  if (tp <= nkv) {
    s.kv_head_begin = SplitBegin(nkv, tp_rank, tp);
    s.num_kv_heads = SplitBegin(nkv, tp_rank + 1, tp) - s.kv_head_begin;
    s.head_begin = s.kv_head_begin * g;
    s.num_heads = s.num_kv_heads * g;
    return s;
  }
  if (tp % nkv != 0 || g % (tp / nkv) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tp ", tp, " does not fit the model's ", nh, " query heads and ", nkv,
                     " KV heads: up to ", nkv, " ranks split the KV heads; above, --tp must be a "
                     "multiple of ", nkv, " that splits each group of ", g,
                     " query heads evenly"));
  }
  s.kv_replicas = tp / nkv;
  s.kv_head_begin = tp_rank / s.kv_replicas;
  s.num_kv_heads = 1;
  s.num_heads = g / s.kv_replicas;
  s.head_begin = s.kv_head_begin * g + (tp_rank % s.kv_replicas) * s.num_heads;
  return s;
}

absl::StatusOr<ProcessGrid> ProcessGrid::Create(int world_rank, int world_size, int tp, int sp,
                                                int num_heads, int num_kv_heads) {
  if (tp < 1) return absl::InvalidArgumentError(absl::StrCat("--tp ", tp, " must be >= 1"));
  if (sp < 1) return absl::InvalidArgumentError(absl::StrCat("--sp ", sp, " must be >= 1"));
  if (int64_t(tp) * sp != world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--tp ", tp, " x --sp ", sp, " = ", int64_t(tp) * sp, " ranks, but the world has ",
        world_size, " (mpirun -np / srun -n must equal tp * sp)"));
  }
  if (world_rank < 0 || world_rank >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("world rank ", world_rank, " is outside [0, ", world_size, ")"));
  }
  RESA_ASSIGN_OR_RETURN(HeadSplit heads, SplitHeads(num_heads, num_kv_heads, world_rank % tp, tp));
  return ProcessGrid(world_rank, tp, sp, num_heads, num_kv_heads, heads);
}

std::string ProcessGrid::ToString() const {
  return absl::StrCat("tp ", tp_, " x sp ", sp_, ", rank ", world_rank_, " = (tp ", tp_rank(),
                      ", sp ", sp_rank(), "), heads [", first_head(), ", ",
                      first_head() + local_heads(), "), kv heads [", first_kv_head(), ", ",
                      first_kv_head() + local_kv_heads(), ")");
}

absl::StatusOr<GridCommunicators> BuildGridCommunicators(const ProcessGrid& grid,
                                                         Communicator& world) {
  if (world.rank() != grid.world_rank() || world.size() != grid.world_size()) {
    return absl::InvalidArgumentError(absl::StrCat(world.Describe(), ": grid (", grid.ToString(),
                                                   ") does not match this communicator"));
  }
  GridCommunicators out;
  RESA_ASSIGN_OR_RETURN(out.tp, world.Split(grid.sp_rank(), grid.tp_rank(), "tp"));
  RESA_ASSIGN_OR_RETURN(out.sp, world.Split(grid.tp_rank(), grid.sp_rank(), "sp"));
  return out;
}

}  // namespace resa
