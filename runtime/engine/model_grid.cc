#include "runtime/engine/model_grid.h"

#include "absl/strings/str_cat.h"
#include "runtime/core/status.h"

namespace resa {

std::string ModelGrid::ToString() const {
  return absl::StrCat("tp ", tp_rank, "/", tp, " sp ", sp_rank, "/", sp, ": heads [",
                      shard.head_begin, ", ", shard.head_begin + shard.num_heads, "), kv heads [",
                      shard.kv_head_begin, ", ", shard.kv_head_begin + shard.num_kv_heads,
                      "), mlp [", shard.inter_begin, ", ", shard.inter_begin + shard.inter_size,
                      "), vocab [", shard.vocab_begin, ", ", shard.vocab_begin + shard.vocab_size,
                      ")");
}

absl::StatusOr<ModelGrid> CreateModelGrid(Communicator& world, int tp, int sp,
                                          const ModelConfig& config) {
  if (tp < 1) return absl::InvalidArgumentError(absl::StrCat("--tp ", tp, " must be >= 1"));
  if (sp < 1) return absl::InvalidArgumentError(absl::StrCat("--sp ", sp, " must be >= 1"));
  if (int64_t(tp) * sp != world.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--tp ", tp, " x --sp ", sp, " = ", int64_t(tp) * sp, " ranks, but the world has ",
        world.size(), " (mpirun -np must equal tp * sp)"));
  }
  ModelGrid g;
  g.tp = tp;
  g.sp = sp;
  g.tp_rank = world.rank() % tp;
  g.sp_rank = world.rank() / tp;
  RESA_ASSIGN_OR_RETURN(g.shard, MakeTpShard(config, g.tp_rank, tp));
  if (tp > 1) {
    RESA_ASSIGN_OR_RETURN(g.tp_comm, world.Split(g.sp_rank, g.tp_rank, "tp"));
  }
  if (sp > 1) {
    RESA_ASSIGN_OR_RETURN(g.sp_comm, world.Split(g.tp_rank, g.sp_rank, "sp"));
  }
  return g;
}

}  // namespace resa
