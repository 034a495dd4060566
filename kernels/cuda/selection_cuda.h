// K/V writes, block summaries and ReSA block selection on the GPU: the CUDA twins of
// kernels/cpu/selection.h (resa-spec.md §2.3-2.6). Device pointers unless marked "host";
// workspace rules as in attention_cuda.h (one zeroed workspace may serve every launcher).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/paged_kv_cuda.h"

namespace resa::cuda {

// Writes runs of consecutive tokens (prefill chunks, rectification overwrites) and recomputes
// the summary of every page they touch. Sequence s writes tokens [token_offsets[s],
// token_offsets[s + 1]) of k/v to positions first_pos[s], first_pos[s] + 1, ...; afterwards it
// holds num_keys[s] valid keys, and each touched page's summary is recomputed from its first
// min(16, num_keys[s] - 16 * block) keys (entries sharing a page table row: the sequence's count
// after all their writes). Twin of WriteTokenKv over the run followed by
// RecomputeSummary on the touched pages (equal results: min/max are exact).
struct WriteKvParams {
  PagedKvCuda kv;
  const __nv_bfloat16* k = nullptr;  // [total_tokens][num_kv_heads][head_dim]
  const __nv_bfloat16* v = nullptr;  // same
  int num_seqs = 0;
  const int32_t* token_offsets = nullptr;  // [num_seqs + 1]
  const int32_t* first_pos = nullptr;      // [num_seqs]
  const int32_t* num_keys = nullptr;       // [num_seqs], >= first_pos + tokens
  const int32_t* page_tables = nullptr;    // [num_seqs][page_table_stride]
  int page_table_stride = 0;
  int32_t max_tokens = 0;  // host: >= tokens of every sequence

  // Optional [num_seqs]: entry s uses page table row table_index[s] (default s), so several
  // entries (runs of tokens of one sequence) can share one page table row.
  const int32_t* table_index = nullptr;
};

absl::Status WriteKvCuda(const WriteKvParams& p, cudaStream_t stream);

// One fused decode-step selection per (sequence, KV head):
//  1. (when k_new is set) writes the current token's K/V at position num_keys[b] - 1 and folds
//     its key into that page's summary (slot 0 starts a fresh summary), as WriteTokenKv;
//  2. pooled query = (sum of the group's query heads) / group, fp32;
//  3. scores every block i < M = ceil(num_keys / 16) with the Quest bound
//     sum_d max(q_d * max_d, q_d * min_d) in fp32, block M - 1 = +inf (ScoreBlocks);
//  4. keeps n = NumSelectedBlocks(M, ratio, min_blocks) blocks by (score desc, block asc) with a
//     radix select (no sort) and writes them ascending (TopBlocks).
// The selection equals the CPU one whenever the fp32 scores are equal, which holds exactly when
// the score sums are exact (the tests use small integers); otherwise the two may differ only
// between blocks whose scores differ by fp32 summation-order rounding.
struct SelectBlocksParams {
  PagedKvCuda kv;
  const __nv_bfloat16* q = nullptr;      // [batch][num_heads][head_dim], post-RoPE
  const __nv_bfloat16* k_new = nullptr;  // [batch][num_kv_heads][head_dim] or null (no write)
  const __nv_bfloat16* v_new = nullptr;  // same; set iff k_new is set
  int batch = 0;
  int num_heads = 0;
  const int32_t* num_keys = nullptr;     // [batch], including the current token
  const int32_t* page_tables = nullptr;  // [batch][page_table_stride]
  int page_table_stride = 0;
  int32_t max_num_keys = 0;  // host: >= every num_keys[b]
  float ratio = 0.1f;
  int32_t min_blocks = 16;

  // Out: blocks[(b * num_kv_heads + h) * blocks_stride + i], i < num_blocks[b], ascending.
  // blocks_stride >= NumSelectedBlocks(ceil(max_num_keys / 16), ratio, min_blocks).
  int32_t* blocks = nullptr;
  int32_t* num_blocks = nullptr;  // [batch]
  int blocks_stride = 0;

  void* workspace = nullptr;
  size_t workspace_bytes = 0;

  // Optional, in/out [batch][num_kv_heads]: a threshold hint per row, carried from one decode
  // step to the next (fp32 bits of a score divided by the pooled query's L1 norm, the low 5 bits
  // the scale of the scoring CTAs' histogram of the candidates; zeroed device memory to start;
  // the workspace is larger with it). The output never depends on it: any
  // value gives the same blocks. A close one makes the tail cheaper: in launches of up to 16 rows
  // (batch x KV heads) on the latency kernel, for rows of 8193 to 16385 blocks that keep 1 < n < M,
  // when at least n - 1 and at most 4096 of the row's blocks [0, M - 1) score >= hint x norm, only
  // those are ranked (no sweep over every key); otherwise the whole tail runs. Either way the
  // kernel stores the hint above which about 1.25 (n - 1) + 32 of this step's scores lie, for the
  // next step. Other rows leave it as it is.
  uint32_t* hints = nullptr;

  // Let the next kernel on the stream (the sparse decode of these blocks) be scheduled once every
  // CTA has scored its blocks, while the last CTA of each row (batch x num_kv_heads, a whole SM
  // each) still ranks them, instead of as the selection's CTAs exit. Only the latency kernel
  // (launches of few rows) does; same results either way. Set it when the next kernel fits
  // beside those CTAs (DecodeAttentionFitsBeside): H200, run 41, batch 1, per layer selection
  // then sparse decode, 1.5B 256K 36.4 -> 35.2 us, 7B 32K 21.5 -> 20.7; 7B 256K with the 8-CTA
  // clusters of DecodeSparseClusters, which then do not all find room, 49.1 -> 52.8.
  bool early_dependents = false;
};

size_t SelectBlocksWorkspaceBytes(const SelectBlocksParams& p);
absl::Status SelectBlocksCuda(const SelectBlocksParams& p, cudaStream_t stream);

// Rows SelectBlocksCuda selected with a hint since the process started, on the current device:
// from the hint's candidates, and by the whole tail (too few or too many candidates); and of the
// first, those whose threshold the scoring CTAs' histogram placed (no ranking of every candidate).
struct SelectionHintCounts {
  int64_t from_candidates = 0;
  int64_t whole_tail = 0;
  int64_t from_histogram = 0;
};
absl::StatusOr<SelectionHintCounts> ReadSelectionHintCounts();

// Clock cycles the candidate tail (rows selected from their hint's candidates) spent in each of
// its phases since the process started, summed over rows, on the current device; `names` and
// `cycles` are empty unless the library was built with RESA_SELECT_TAIL_STAMPS (CMake option),
// a diagnostic that costs a few clock reads and atomics a row.
struct SelectTailPhases {
  std::vector<const char*> names;  // count, scan, ids, gather, hist, pivot, compact, ...
  std::vector<uint64_t> cycles;    // one a name
  uint64_t tails = 0;              // rows counted
};
absl::StatusOr<SelectTailPhases> ReadSelectTailPhases();

// Sequence parallelism: the scores of the blocks one SP rank holds, for the exchange across ranks
// that picks the global top-n (parallel/sp_attention.h, SelectBlocksAcrossRanks). Row b's page
// table lists the rank's blocks: local index j is global block j * sp_size + sp_rank. For every
// (sequence b, KV head h) and j < local block count (number of global blocks i < M with
// i % sp_size == sp_rank, M = ceil(num_keys[b] / 16)), writes
// scores[(b * num_kv_heads + h) * scores_stride + j] = the Quest bound of the group's pooled query
// with exactly the fp32 arithmetic of SelectBlocksCuda (bit-identical scores: same pooled query,
// same per-lane order and QuadSum), and +inf for global block M - 1 when this rank holds it.
// Entries past a row's local block count are not written. No workspace; does not write K/V (the
// current token must already be in the cache and its summary). Twin of the CPU pooled query +
// ScoreBlocks / ScoreLocalBlocks.
struct ScoreBlocksParams {
  PagedKvCuda kv;
  const __nv_bfloat16* q = nullptr;  // [batch][num_heads][head_dim], post-RoPE
  int batch = 0;
  int num_heads = 0;
  const int32_t* num_keys = nullptr;     // [batch], global key count including the current token
  const int32_t* page_tables = nullptr;  // [batch][page_table_stride], local blocks
  int page_table_stride = 0;
  int32_t max_num_keys = 0;  // host: >= every num_keys[b]
  int sp_rank = 0, sp_size = 1;
  float* scores = nullptr;
  int scores_stride = 0;  // >= local block count of every row
};

absl::Status ScoreBlocksCuda(const ScoreBlocksParams& p, cudaStream_t stream);

// n = max(ceil(ratio * M), min(M, min_blocks)) with the product in fp32, exactly as the CPU
// NumSelectedBlocks (host and device share this definition).
__host__ __device__ inline int32_t NumSelectedBlocksCuda(int32_t num_blocks, float ratio,
                                                         int32_t min_blocks) {
  if (ratio >= 1.0f) return num_blocks;
  const float prod = ratio * static_cast<float>(num_blocks);
  int32_t n = static_cast<int32_t>(ceilf(prod));
  const int32_t floor_n = num_blocks < min_blocks ? num_blocks : min_blocks;
  n = n > floor_n ? n : floor_n;
  return n < num_blocks ? n : num_blocks;
}

}  // namespace resa::cuda
