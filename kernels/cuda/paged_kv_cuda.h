// Paged KV cache of one layer in device memory: the bf16 mirror of kernels/cpu/paged_kv.h.
//
// Layout (DESIGN.md §3), identical to the CPU one except for the element type:
//   k, v     [num_pages][num_kv_heads][kPageTokens = 16][head_dim]  bf16
//   summary  [num_pages][num_kv_heads][2][head_dim]                 bf16: element-wise min (0)
//            and max (1) of the post-RoPE keys written to the page. Min and max of bf16 keys are
//            bf16 keys, so bf16 summaries are exact (never rounded) and half the bytes of fp32.
// One (page, KV head) is a contiguous 16 x head_dim run of K and one of V: a selected block is
// two 16 * head_dim * 2-byte reads. Slots of a page beyond a sequence's length may hold anything
// (stale or uninitialised bits, NaN included): every kernel masks them.
#pragma once

#include <cuda_bf16.h>

#include <cstddef>
#include <cstdint>

namespace resa::cuda {

inline constexpr int kPageTokens = 16;

// Front of every kernel workspace: arrival counters, zero between launches (attention_cuda.h).
inline constexpr size_t kWorkspaceCounterBytes = size_t(256) << 10;
inline constexpr int kWorkspaceCounters = int(kWorkspaceCounterBytes / sizeof(int));

struct PagedKvCuda {
  __nv_bfloat16* k = nullptr;
  __nv_bfloat16* v = nullptr;
  __nv_bfloat16* summary = nullptr;
  int num_kv_heads = 0;
  int head_dim = 0;  // 64 or 128
  // Pages in the pool (k and v each hold num_pages * page_elems()), or 0 when the caller does
  // not say: the wgmma chunk kernels then copy K/V tiles with cp.async instead of TMA, whose
  // tensor maps need the pool's extent.
  int32_t num_pages = 0;

  size_t page_elems() const { return size_t(num_kv_heads) * kPageTokens * head_dim; }
  size_t summary_page_elems() const { return size_t(num_kv_heads) * 2 * head_dim; }
};

}  // namespace resa::cuda
