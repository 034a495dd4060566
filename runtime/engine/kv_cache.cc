#include "runtime/engine/kv_cache.h"

#include <algorithm>
#include <new>

#include "absl/strings/str_cat.h"

namespace resa {

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(const ModelConfig& config,
                                                         int32_t num_pages, const KvShard& shard) {
  if (num_pages <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache needs at least one page, got ", num_pages));
  }
  if (shard.blocks.size < 1 || shard.blocks.rank < 0 || shard.blocks.rank >= shard.blocks.size ||
      shard.num_kv_heads < 0 || shard.num_kv_heads > config.num_kv_heads) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache shard: SP rank ", shard.blocks.rank, " of ", shard.blocks.size, ", ",
                     shard.num_kv_heads, " KV heads of ", config.num_kv_heads));
  }
  std::unique_ptr<KvCache> c(new KvCache());
  c->num_layers_ = config.num_layers;
  c->num_kv_heads_ = shard.num_kv_heads > 0 ? shard.num_kv_heads : config.num_kv_heads;
  c->shard_ = shard.blocks;
  c->head_dim_ = config.head_dim;
  c->num_pages_ = num_pages;
  const size_t page = size_t(c->num_kv_heads_) * kPageTokens * config.head_dim;
  const size_t summary = size_t(c->num_kv_heads_) * 2 * config.head_dim;
  for (int l = 0; l < config.num_layers; ++l) {
    // Value-initialised (zero) so unwritten slots never hold garbage NaNs.
    c->k_.emplace_back(new (std::nothrow) float[page * num_pages]());
    c->v_.emplace_back(new (std::nothrow) float[page * num_pages]());
    c->summary_.emplace_back(new (std::nothrow) float[summary * num_pages]());
    if (!c->k_.back() || !c->v_.back() || !c->summary_.back()) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot allocate the KV cache: ", num_pages, " pages x ", config.num_layers,
                       " layers = ", c->bytes() / 1e6, " MB; lower --ctx or --batch"));
    }
  }
  c->free_.reserve(num_pages);
  for (int32_t p = num_pages - 1; p >= 0; --p) c->free_.push_back(p);
  return c;
}

uint64_t KvCache::bytes() const {
  const uint64_t per_page =
      (2ull * kPageTokens + 2ull) * uint64_t(num_kv_heads_) * uint64_t(head_dim_) * sizeof(float);
  return per_page * uint64_t(num_pages_) * uint64_t(num_layers_);
}

absl::Status KvCache::Reserve(SequenceKv& seq, int32_t length) {
  const int32_t need = PagesFor(length) - int32_t(seq.page_table.size());
  if (need <= 0) return absl::OkStatus();
  if (need > int32_t(free_.size())) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache full: need ", need, " more pages of ", kPageTokens, " tokens, ",
                     free_.size(), " free of ", num_pages_, "; raise --ctx"));
  }
  for (int32_t i = 0; i < need; ++i) {
    seq.page_table.push_back(free_.back());
    free_.pop_back();
  }
  return absl::OkStatus();
}

void KvCache::ShrinkPages(SequenceKv& seq, size_t num_pages) {
  while (seq.page_table.size() > num_pages) {
    free_.push_back(seq.page_table.back());
    seq.page_table.pop_back();
  }
  seq.length = std::min(seq.length, Capacity(seq));
}

void KvCache::Release(SequenceKv& seq) {
  for (int32_t p : seq.page_table) free_.push_back(p);
  seq.page_table.clear();
  seq.length = 0;
}

}  // namespace resa
