// Attention over a paged KV cache on the CPU: dense (all keys up to a length) or block-sparse
// (selected 16-token blocks per KV head), for any number of query rows of any sequences.
//
// Conventions (DESIGN.md §3): q is [rows][num_heads][head_dim], post-RoPE; query head j reads KV
// head j / group (group = num_heads / num_kv_heads). Output O is normalised, [rows][num_heads]
// [head_dim]. lse_ln (optional) is [rows][num_heads]: natural log of the softmax denominator in
// scaled-logit units (scores already multiplied by `scale`); a row with no visible key gets
// O = 0 and lse_ln = -inf.
#pragma once

#include <cstdint>
#include <span>

#include "kernels/cpu/paged_kv.h"

namespace resa {

struct AttentionRow {
  const int32_t* page_table = nullptr;  // logical block -> physical page for this row's sequence
  int32_t num_keys = 0;                 // this row sees positions [0, num_keys)
  // Block-sparse rows (sparse = true): per KV head h, blocks[h * blocks_stride + i] for
  // i < num_blocks are the logical blocks to read (any order, no duplicates; possibly none);
  // positions >= num_keys are masked. Dense rows read every position in [0, num_keys).
  bool sparse = false;
  const int32_t* blocks = nullptr;
  int32_t num_blocks = 0;
  int32_t blocks_stride = 0;
};

struct AttentionParams {
  int num_heads = 0;
  float scale = 0.0f;  // usually 1/sqrt(head_dim)
};

// Plain loops, two passes (max, then sum): the oracle for every other attention kernel.
void PagedAttentionReference(const PagedKvLayer& kv, const AttentionParams& p, const float* q,
                             std::span<const AttentionRow> rows, float* out, float* lse_ln);

// Fast path: rows x KV heads in parallel (OpenMP), the query heads of a group share each K/V
// page read, online softmax. Same contract as the reference.
void PagedAttention(const PagedKvLayer& kv, const AttentionParams& p, const float* q,
                    std::span<const AttentionRow> rows, float* out, float* lse_ln);

// Dense causal attention of `num_rows` consecutive query positions of ONE sequence (a prefill or
// rectification chunk): row r sees keys [0, first_num_keys + r). K/V pages are gathered into
// contiguous scratch and multiplied with OpenBLAS. Same output contract as above.
void PagedChunkAttention(const PagedKvLayer& kv, const AttentionParams& p, const float* q,
                         int num_rows, const int32_t* page_table, int32_t first_num_keys,
                         float* out, float* lse_ln);

// The same over a subset of the sequence's blocks (e.g. the blocks one sequence-parallel rank
// owns): row r sees the positions < first_num_keys + r of the logical blocks in `blocks`, which
// must be ascending and distinct (the same list for every KV head); page_table is read only for
// them. Rows that see no key (an empty list, or only blocks past their causal end) get O = 0 and
// lse_ln = -inf, so they merge as zero. With every block of [0, ceil(keys / 16)) listed the
// result is bit-identical to the overload above.
void PagedChunkAttention(const PagedKvLayer& kv, const AttentionParams& p, const float* q,
                         int num_rows, const int32_t* page_table, int32_t first_num_keys,
                         std::span<const int32_t> blocks, float* out, float* lse_ln);

// Merges partial states (O_a, lse_a) and (O_b, lse_b) of the same queries over disjoint key
// sets into (O, lse), in place into a: O = w_a O_a + w_b O_b with w_x = exp(lse_x - lse),
// lse = logaddexp(lse_a, lse_b). An empty partial (lse = -inf) contributes nothing; two empty
// partials give O = 0, lse = -inf. Shapes [n][head_dim] and [n].
void MergeAttentionStates(float* o_a, float* lse_a, const float* o_b, const float* lse_b, int n,
                          int head_dim);

}  // namespace resa
