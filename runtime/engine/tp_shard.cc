#include "runtime/engine/tp_shard.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "parallel/process_grid.h"
#include "runtime/core/status.h"

namespace resa {
namespace {

int SplitBegin(int n, int rank, int size) { return int(int64_t(n) * rank / size); }

}  // namespace

absl::StatusOr<TpShard> MakeTpShard(const ModelConfig& c, int rank, int size) {
  // The head rule is ProcessGrid's (parallel/process_grid.h): one rule, one error wording.
  RESA_ASSIGN_OR_RETURN(HeadSplit heads, SplitHeads(c.num_heads, c.num_kv_heads, rank, size));
  TpShard s;
  s.rank = rank;
  s.size = size;
  s.head_begin = heads.head_begin;
  s.num_heads = heads.num_heads;
  s.kv_head_begin = heads.kv_head_begin;
  s.num_kv_heads = heads.num_kv_heads;
  s.kv_replicas = heads.kv_replicas;
  if (c.intermediate_size < size || c.vocab_size < size) {
    return absl::InvalidArgumentError(absl::StrCat("--tp ", size, " exceeds the model's MLP width ",
                                                   c.intermediate_size, " or vocabulary ",
                                                   c.vocab_size));
  }
  s.inter_begin = SplitBegin(c.intermediate_size, rank, size);
  s.inter_size = SplitBegin(c.intermediate_size, rank + 1, size) - s.inter_begin;
  s.vocab_chunk = (c.vocab_size + size - 1) / size;
  s.vocab_begin = std::min(c.vocab_size, rank * s.vocab_chunk);
  s.vocab_size = std::min(c.vocab_size, (rank + 1) * s.vocab_chunk) - s.vocab_begin;
  return s;
}

TpShard FullTpShard(const ModelConfig& c) {
  TpShard s;
  s.num_heads = c.num_heads;
  s.num_kv_heads = c.num_kv_heads;
  s.inter_size = c.intermediate_size;
  s.vocab_size = c.vocab_size;
  s.vocab_chunk = c.vocab_size;
  return s;
}

}  // namespace resa
