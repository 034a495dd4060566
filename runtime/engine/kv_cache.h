// The paged KV cache of the CPU backend: a fixed pool of 16-token pages per layer (K, V and the
// per-page min/max key summary), a free list, and per-sequence page tables.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu/paged_kv.h"
#include "runtime/model/model_config.h"

namespace resa {

class KvCache;

// One sequence's view of the cache: its page table and how many positions hold K/V.
struct SequenceKv {
  std::vector<int32_t> page_table;  // logical block -> physical page
  int32_t length = 0;               // positions [0, length) are written

  int32_t capacity() const { return int32_t(page_table.size()) * kPageTokens; }
};

class KvCache {
 public:
  // Allocates num_pages pages for every layer. ResourceExhausted (with the byte count) when the
  // allocation fails.
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(const ModelConfig& config,
                                                         int32_t num_pages);

  PagedKvLayer layer(int index) {
    return PagedKvLayer{k_[index].get(), v_[index].get(), summary_[index].get(), num_kv_heads_,
                        head_dim_};
  }
  int32_t num_pages() const { return num_pages_; }
  int32_t free_pages() const { return int32_t(free_.size()); }
  uint64_t bytes() const;

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
  std::vector<std::unique_ptr<float[]>> k_, v_, summary_;
  std::vector<int32_t> free_;
};

}  // namespace resa
