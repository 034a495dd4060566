// A rank's place in the TP x SP grid of a model (DESIGN.md §5) and its group communicators: what
// a CpuModel, its weights and its KV cache need to run distributed.
//
// Layout and validation are ProcessGrid's (parallel/process_grid.h): world rank = sp_rank * tp +
// tp_rank, heads split by SplitHeads, which MakeTpShard (tp_shard.h) also uses, so the grid the
// engine runs is exactly the grid ProcessGrid::Create accepts, with the same --tp errors.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"
#include "runtime/engine/cpu_model.h"
#include "runtime/engine/kv_cache.h"
#include "runtime/engine/tp_shard.h"
#include "runtime/model/model_config.h"

namespace resa {

struct ModelGrid {
  int tp = 1, sp = 1;
  int tp_rank = 0, sp_rank = 0;
  TpShard shard;
  // Null for a group of one (no collectives are issued then).
  std::unique_ptr<Communicator> tp_comm, sp_comm;

  ModelGroups groups() const { return ModelGroups{tp_comm.get(), sp_comm.get()}; }
  KvShard kv_shard() const { return KvShard{shard.num_kv_heads, SequenceShard{sp_rank, sp}}; }
  // "tp 1/2 sp 0/2: heads [3, 9), kv heads [1, 3), mlp [768, 1536), vocab [24576, 49152)".
  std::string ToString() const;
};

// Validates the grid against the world and the model (errors name --tp / --sp and are the same
// on every rank, so all ranks fail together before any collective), then splits `world` into the
// "tp" and "sp" groups. Collective over world when tp > 1 or sp > 1.
absl::StatusOr<ModelGrid> CreateModelGrid(Communicator& world, int tp, int sp,
                                          const ModelConfig& config);

}  // namespace resa
