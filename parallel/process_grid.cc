#include "parallel/process_grid.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "runtime/core/status.h"

namespace resa {

absl::StatusOr<ProcessGrid> ProcessGrid::Create(int world_rank, int world_size, int tp, int sp,
                                                int num_heads, int num_kv_heads) {
  if (tp < 1) return absl::InvalidArgumentError(absl::StrCat("--tp ", tp, " must be >= 1"));
  if (sp < 1) return absl::InvalidArgumentError(absl::StrCat("--sp ", sp, " must be >= 1"));
  if (num_heads < 1 || num_kv_heads < 1 || num_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("model has ", num_heads, " query heads and ",
                                                   num_kv_heads,
                                                   " KV heads; KV heads must divide query heads"));
  }
  if (int64_t(tp) * sp != world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--tp ", tp, " x --sp ", sp, " = ", int64_t(tp) * sp, " ranks, but the world has ",
        world_size, " (mpirun -np / srun -n must equal tp * sp)"));
  }
  if (world_rank < 0 || world_rank >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("world rank ", world_rank, " is outside [0, ", world_size, ")"));
  }
  if (num_heads % tp != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tp ", tp, " does not divide the model's ", num_heads, " query heads"));
  }
  if (num_kv_heads % tp != 0 && tp % num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--tp ", tp, " and the model's ", num_kv_heads,
        " KV heads: one must divide the other (KV heads are split when tp <= ", num_kv_heads,
        ", replicated when tp is a multiple of ", num_kv_heads, ")"));
  }
  return ProcessGrid(world_rank, tp, sp, num_heads, num_kv_heads);
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
