// What one rank of a tensor-parallel group holds of a model (DESIGN.md §5): a contiguous range of
// query heads and the KV heads they read, a range of the MLP's intermediate columns, and a range
// of lm_head (vocabulary) rows. Computed once from the config and validated; the weights loader,
// the KV cache and the forward all read their local shapes from it.
//
// Heads follow SplitHeads (parallel/process_grid.h), the one rule ProcessGrid also applies: split
// by KV group (uneven when T does not divide the KV heads, e.g. SmolLM2's 9 heads / 3 KV heads at
// T = 2: 3 + 6 query heads); with T > Hkv each KV head is replicated on T / Hkv consecutive ranks
// that split its group of query heads evenly.
// The intermediate and vocabulary ranges are balanced contiguous splits (floor(r * N / T)).
#pragma once

#include "absl/status/statusor.h"
#include "runtime/model/model_config.h"

namespace resa {

struct TpShard {
  int rank = 0;
  int size = 1;
  int head_begin = 0, num_heads = 0;        // local query heads
  int kv_head_begin = 0, num_kv_heads = 0;  // local KV heads
  int kv_replicas = 1;                      // ranks holding each KV head (T / Hkv when T > Hkv)
  int inter_begin = 0, inter_size = 0;      // MLP intermediate columns
  int vocab_begin = 0, vocab_size = 0;      // lm_head rows (vocab-parallel logits)
  int vocab_chunk = 0;                      // ceil(vocab / T): the padded all-gather count

  bool full() const { return size == 1; }
};

// Rank `rank` of a TP group of `size`. InvalidArgument naming --tp when the heads do not split.
absl::StatusOr<TpShard> MakeTpShard(const ModelConfig& config, int rank, int size);
// The whole model (one rank).
TpShard FullTpShard(const ModelConfig& config);

}  // namespace resa
