#include "runtime/engine/model_grid.h"

#include "absl/strings/str_cat.h"
#include "parallel/process_grid.h"
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
  // ProcessGrid validates the grid (flags, world size, heads) with the errors --tp / --sp report.
  RESA_ASSIGN_OR_RETURN(
      ProcessGrid pg, ProcessGrid::Create(world.rank(), world.size(), tp, sp, config.num_heads,
                                          config.num_kv_heads));
  ModelGrid g;
  g.tp = tp;
  g.sp = sp;
  g.tp_rank = pg.tp_rank();
  g.sp_rank = pg.sp_rank();
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
