// Paged KV cache of one layer in device memory: the bf16 mirror of kernels/cpu/paged_kv.h.
//
// Layout (DESIGN.md §3), identical to the CPU one except for the element type:
//   k, v     [num_pages][num_kv_heads][kPageTokens = 16][head_dim]  bf16
//   summary  [num_pages / 64][num_kv_heads][2][head_dim][64]        bf16: element-wise min (0)
//            and max (1) of the post-RoPE keys written to the page. Min and max of bf16 keys are
//            bf16 keys, so bf16 summaries are exact (never rounded) and half the bytes of fp32.
// The summaries are the one place the device layout differs from the CPU's
// [num_pages][num_kv_heads][2][head_dim]: pages come in aligned groups of kSummaryGroup = 64,
// and a group stores, per KV head, min and max dimension-major with the group's 64 pages
// innermost (SummaryIndex): one 128-byte line per (KV head, part, dim). The selection's bound
// needs one of min or max per dimension (the max where the query is >= 0, the min where it is
// < 0), so for a sequence whose 64 consecutive blocks sit on one aligned group (what
// DeviceKvCache hands out) it reads whole lines of the parts it needs: half the summary bytes,
// at any L2 fetch granularity. The pool holds SummaryPoolElems(num_pages) elements (num_pages
// rounded up to a whole group).
// One (page, KV head) is a contiguous 16 x head_dim run of K and one of V: a selected block is
// two 16 * head_dim * 2-byte reads. Slots of a page beyond a sequence's length may hold anything
// (stale or uninitialised bits, NaN included): every kernel masks them.
#pragma once

#include <cuda_bf16.h>

#include <cstddef>
#include <cstdint>

namespace resa::cuda {

inline constexpr int kPageTokens = 16;
// Pages of one summary group (the summary layout above).
inline constexpr int kSummaryGroup = 64;

// Element index of the summary of `page` for KV head h, part 0 (min) or 1 (max), dimension d.
__host__ __device__ __forceinline__ size_t SummaryIndex(int32_t page, int h, int part, int d,
                                                        int num_kv_heads, int head_dim) {
  return (((size_t(page / kSummaryGroup) * num_kv_heads + h) * 2 + part) * head_dim + d) *
             kSummaryGroup +
         size_t(page % kSummaryGroup);
}

// Elements of a summary pool for num_pages pages (a whole number of groups).
__host__ __device__ __forceinline__ size_t SummaryPoolElems(int64_t num_pages, int num_kv_heads,
                                                            int head_dim) {
  return size_t((num_pages + kSummaryGroup - 1) / kSummaryGroup) * kSummaryGroup *
         size_t(num_kv_heads) * 2 * head_dim;
}

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
  // Summary elements of one page (strided in the pool: SummaryIndex).
  size_t summary_page_elems() const { return size_t(num_kv_heads) * 2 * head_dim; }
};

}  // namespace resa::cuda
