// ReSA block summaries and block selection on the CPU (resa-spec.md §2.3-2.6).
#pragma once

#include <cstdint>

#include "kernels/cpu/paged_kv.h"

namespace resa {

// Writes one token's K and V ([num_kv_heads][head_dim] each) into slot `slot` of `page` and folds
// the key into the page summary: slot 0 starts a fresh summary (min = max = key), later slots
// widen it. Writing slots 0..n-1 in order leaves exactly the summary RecomputeSummary gives.
void WriteTokenKv(const PagedKvLayer& kv, int32_t page, int slot, const float* k, const float* v);

// Recomputes a page's summary from its first `valid_tokens` keys (after keys were overwritten).
void RecomputeSummary(const PagedKvLayer& kv, int32_t page, int valid_tokens);

// n = max(ceil(ratio * M), min(M, min_blocks)), the product taken in fp32 as the reference does
// (so ratio 0.1 and M = 160 give 16, not 17). ratio >= 1 gives M.
int32_t NumSelectedBlocks(int32_t num_blocks, float ratio, int32_t min_blocks);

// Quest upper-bound score of every block of a sequence for each KV head:
// scores[h][b] = sum_d max(q[h][d] * max[b][h][d], q[h][d] * min[b][h][d]) in fp32, with
// pooled_q [num_kv_heads][head_dim] (mean of the group's post-RoPE queries). The block holding
// the last key (num_keys - 1) scores +inf so it is always kept. scores is [num_kv_heads][M].
void ScoreBlocks(const PagedKvLayer& kv, const float* pooled_q, const int32_t* page_table,
                 int32_t num_keys, float* scores);

// Top-n blocks per KV head by (score desc, block asc), written ascending by block id into
// out [num_kv_heads][n]. scores as produced by ScoreBlocks, M = ceil(num_keys / 16), n <= M.
void TopBlocks(const float* scores, int num_kv_heads, int32_t num_blocks, int32_t n,
               int32_t* out);

// Reference selection: full sort of every score row (the oracle for TopBlocks and the GPU).
void TopBlocksReference(const float* scores, int num_kv_heads, int32_t num_blocks, int32_t n,
                        int32_t* out);

}  // namespace resa
