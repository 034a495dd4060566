#include "runtime/engine/tp_shard.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace resa {
namespace {

int SplitBegin(int n, int rank, int size) { return int(int64_t(n) * rank / size); }

}  // namespace

absl::StatusOr<TpShard> MakeTpShard(const ModelConfig& c, int rank, int size) {
  if (size < 1 || rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tp ", size, ": rank ", rank, " is outside the group"));
  }
  const int nh = c.num_heads, nkv = c.num_kv_heads;
  if (nh < 1 || nkv < 1 || nh % nkv != 0) {
    return absl::InvalidArgumentError(absl::StrCat("model has ", nh, " query heads and ", nkv,
                                                   " KV heads; KV heads must divide query heads"));
  }
  const int g = nh / nkv;
  TpShard s;
  s.rank = rank;
  s.size = size;
  if (size <= nkv) {
    s.kv_head_begin = SplitBegin(nkv, rank, size);
    s.num_kv_heads = SplitBegin(nkv, rank + 1, size) - s.kv_head_begin;
    s.head_begin = s.kv_head_begin * g;
    s.num_heads = s.num_kv_heads * g;
  } else {
    if (size % nkv != 0 || g % (size / nkv) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tp ", size, " does not fit the model's ", nh, " query heads and ", nkv,
                       " KV heads: above ", nkv, " ranks, --tp must be a multiple of ", nkv,
                       " that splits each group of ", g, " query heads evenly"));
    }
    s.kv_replicas = size / nkv;
    s.kv_head_begin = rank / s.kv_replicas;
    s.num_kv_heads = 1;
    s.num_heads = g / s.kv_replicas;
    s.head_begin = s.kv_head_begin * g + (rank % s.kv_replicas) * s.num_heads;
  }
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
