// Paged KV-cache views shared by the CPU kernels (and mirrored by the CUDA ones).
//
// Layout (DESIGN.md §3): a page holds kPageTokens = 16 consecutive token positions of one
// sequence. Per layer, the pool is [num_pages][num_kv_heads][kPageTokens][head_dim] for K and the
// same for V, so one (page, KV head) is a contiguous 16 x head_dim run: a selected block is one
// read. Each page also carries its block summary, [num_pages][num_kv_heads][2][head_dim]: the
// element-wise min (index 0) and max (index 1) of the post-RoPE keys written to it so far.
// A sequence maps logical block b (positions [16b, 16b+16)) to a physical page via its page table.
#pragma once

#include <cstddef>
#include <cstdint>

namespace resa {

inline constexpr int kPageTokens = 16;

struct PagedKvLayer {
  float* k = nullptr;        // [num_pages][num_kv_heads][kPageTokens][head_dim]
  float* v = nullptr;        // same shape as k
  float* summary = nullptr;  // [num_pages][num_kv_heads][2][head_dim]: min, max
  int num_kv_heads = 0;
  int head_dim = 0;

  size_t page_elems() const { return size_t(num_kv_heads) * kPageTokens * head_dim; }
  float* k_at(int32_t page, int kv_head) const {
    return k + (size_t(page) * num_kv_heads + kv_head) * kPageTokens * head_dim;
  }
  float* v_at(int32_t page, int kv_head) const {
    return v + (size_t(page) * num_kv_heads + kv_head) * kPageTokens * head_dim;
  }
  float* min_at(int32_t page, int kv_head) const {
    return summary + (size_t(page) * num_kv_heads + kv_head) * 2 * head_dim;
  }
  float* max_at(int32_t page, int kv_head) const { return min_at(page, kv_head) + head_dim; }
};

}  // namespace resa
