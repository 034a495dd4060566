// The paged KV cache of the CPU backend: a fixed pool of 16-token pages per layer (K, V and the
// per-page min/max key summary), a free list, and per-sequence page tables.
//
// Under TP x SP a rank's cache holds its KV heads only and, of every sequence, only the blocks
// its SequenceShard owns (block b on SP rank b % S, DESIGN.md §5): page_table[j] is the page of
// logical block shard.GlobalBlock(j). Every rank of an SP group reserves the same number of
// pages per sequence (ceil(blocks / S), what SP rank 0 needs; the others may keep one spare), so
// pools fill identically and a full cache fails on every rank at once.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu/paged_kv.h"
#include "parallel/sp_attention.h"
#include "runtime/model/model_config.h"

namespace resa {

class KvCache;

// One sequence's view of the cache: its page table and how many positions hold K/V.
struct SequenceKv {
  std::vector<int32_t> page_table;  // local block index -> physical page (logical block when S = 1)
  int32_t length = 0;               // positions [0, length) are written (global positions)
};

// What one rank stores: `num_kv_heads` KV heads (0: the config's) and `blocks` of each sequence.
struct KvShard {
  int num_kv_heads = 0;
  SequenceShard blocks;
};

class KvCache {
 public:
  // Allocates num_pages pages for every layer. ResourceExhausted (with the byte count) when the
  // allocation fails.
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(const ModelConfig& config,
                                                         int32_t num_pages,
                                                         const KvShard& shard = {});

  PagedKvLayer layer(int index) {
    return PagedKvLayer{k_[index].get(), v_[index].get(), summary_[index].get(), num_kv_heads_,
                        head_dim_};
  }
  int32_t num_pages() const { return num_pages_; }
  int32_t free_pages() const { return int32_t(free_.size()); }
  uint64_t bytes() const;
  const SequenceShard& shard() const { return shard_; }
  // Positions a sequence can hold: num_pages() x S pages of 16 tokens (S = SP group size).
  int32_t max_tokens() const { return num_pages_ * shard_.size * kPageTokens; }
  // Positions `seq` can hold with its current pages.
  int32_t Capacity(const SequenceKv& seq) const {
    return int32_t(seq.page_table.size()) * shard_.size * kPageTokens;
  }
  // Local pages a sequence of `length` positions holds (the same on every SP rank).
  int32_t PagesFor(int32_t length) const {
    const int32_t blocks = (length + kPageTokens - 1) / kPageTokens;
    return (blocks + shard_.size - 1) / shard_.size;
  }
  // Physical page of logical block b, which this rank must own.
  int32_t Page(const SequenceKv& seq, int32_t block) const {
    return seq.page_table[shard_.LocalIndex(block)];
  }

  // Grows `seq` so it can hold `length` positions. ResourceExhausted when the pool is short; the
  // sequence is left unchanged then.
  absl::Status Reserve(SequenceKv& seq, int32_t length);
  // Returns the sequence's pages beyond the first `num_pages` to the pool (undoes a Reserve).
  void ShrinkPages(SequenceKv& seq, size_t num_pages);
  // Returns all of the sequence's pages to the pool.
  void Release(SequenceKv& seq);

 private:
  KvCache() = default;
  int num_layers_ = 0, num_kv_heads_ = 0, head_dim_ = 0;
  int32_t num_pages_ = 0;
  SequenceShard shard_;
  std::vector<std::unique_ptr<float[]>> k_, v_, summary_;
  std::vector<int32_t> free_;
};

}  // namespace resa
