// Sequence-parallel attention primitives on the CPU, over any host-buffer Communicator (the SP
// group of a ProcessGrid). DESIGN.md §5: page (logical block) i of every sequence lives on SP
// rank i mod S; each rank scores its own pages, the ranks exchange their local top-n candidates
// and all derive the same global top-n, each attends over the selected pages it holds, and the
// partial (O, lse_ln) states are merged across the group.
//
// A sparse decode step on SP rank r, per layer (shapes as in kernels/cpu/attention.h):
//   SequenceShard shard{r, S};
//   ScoreLocalBlocks(kv, pooled_q, local_table, num_keys, shard, local_scores);
//   SelectBlocksAcrossRanks(sp, local_scores, OwnedBlocks(shard, M), hkv, n, selected);
//   OwnedSelection(shard, selected, hkv, n, M, &mine) -> stride;
//   row = {ExpandLocalPageTable(...).data(), num_keys, sparse, mine.data(), stride, stride};
//   PagedAttention(kv, params, q, rows, o, lse_ln);
//   MergeAttentionStatesAcrossRanks(sp, o, lse_ln, rows * heads, head_dim);
// Dense chunks (prefill, rectification) run PagedChunkAttention over OwnedBlocks (its block-subset
// overload); dense decode rows pass OwnedBlocks as the row's list (stride 0).
// The selection equals TopBlocks over the whole sequence exactly, for any S; the merged output
// equals single-rank attention up to fp32 reordering, and is bit-identical on every SP rank.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "kernels/cpu/paged_kv.h"
#include "parallel/communicator.h"

namespace resa {

// Ownership of logical blocks under SP: block b lives on rank b % size at local index b / size.
struct SequenceShard {
  int rank = 0;
  int size = 1;

  int Owner(int32_t block) const { return int(block % size); }
  bool Owns(int32_t block) const { return block % size == rank; }
  int32_t LocalIndex(int32_t block) const { return block / size; }  // requires Owns(block)
  int32_t GlobalBlock(int32_t local_index) const { return local_index * size + rank; }
  // Blocks of [0, num_blocks) this rank holds.
  int32_t NumLocalBlocks(int32_t num_blocks) const {
    return num_blocks > rank ? (num_blocks - rank + size - 1) / size : 0;
  }
};

// The owned blocks of [0, num_blocks), ascending.
std::vector<int32_t> OwnedBlocks(const SequenceShard& shard, int32_t num_blocks);

// A page table indexed by logical block, as the attention kernels take it: entry b is
// local_page_table[shard.LocalIndex(b)] for owned blocks and -1 for the others (never read when
// the attention rows list only owned blocks).
std::vector<int32_t> ExpandLocalPageTable(const SequenceShard& shard,
                                          const int32_t* local_page_table, int32_t num_blocks);

// ScoreBlocks (kernels/cpu/selection.h) restricted to this rank's blocks, bit-identical to the
// scores ScoreBlocks gives those blocks over the whole sequence. local_page_table[j] is the
// physical page of logical block shard.GlobalBlock(j); num_keys is the global key count (current
// token included). scores is [num_kv_heads][NumLocalBlocks(M)] in local order; the block holding
// key num_keys - 1 scores +inf when this rank owns it.
void ScoreLocalBlocks(const PagedKvLayer& kv, const float* pooled_q,
                      const int32_t* local_page_table, int32_t num_keys, const SequenceShard& shard,
                      float* scores);

// Reusable buffers of SelectBlocksAcrossRanks (optional; avoids allocation per call).
struct SelectionScratch {
  std::vector<int32_t> send;
  std::vector<int32_t> recv;
  std::vector<std::pair<float, int32_t>> candidates;
  std::vector<std::pair<float, int32_t>> truncated;
  std::vector<int32_t> budget;
};

// One row of a distributed selection: one KV head of one sequence, as this rank sees it.
struct SelectionRow {
  const float* scores = nullptr;    // [num_local] this rank's scores of its blocks (no NaN)
  const int32_t* blocks = nullptr;  // [num_local] their logical ids (disjoint across ranks)
  int32_t num_local = 0;
  int32_t n = 0;           // blocks to keep, at most the row's total block count over ranks
  int32_t* out = nullptr;  // [n] the selection, ascending block ids
};

// Candidates per row a rank sends in the first exchange of SelectBlocksAcrossRanks:
// min(n, ceil(n / S + 2 sqrt(n) + 4)), the same on every rank.
int32_t FirstRoundCandidates(int32_t n, int ranks);

// Global top-n blocks of every row by (score desc, block asc), identical on every rank of `sp`
// and equal to TopBlocks over the scores of all ranks' blocks of the row together (exactly, ties
// included). One all-gather for all rows (a batch of sequences x KV heads of one layer): each
// rank sends its local top-k of each row, k = FirstRoundCandidates(n, S), i.e. 1 + 2 rows +
// 2 sum(k) int32 words per rank. The union decides a row unless a rank that held more than k
// blocks sent its worst candidate into the union's top-n (its unsent blocks might belong there);
// then every rank repeats the exchange with k = n, which always decides (the global top-n lies
// in the union of the local top-n). Scores spread over the ranks take one exchange; a selection
// concentrated on one rank takes two. Every rank must pass the same
// number of rows with the same n (they size the exchange); ranks that disagree on them with an
// equal total, or a row with fewer blocks than n, give InvalidArgument on every rank. A malformed
// row (negative n, null pointers) fails on its rank before the exchange; its peers then time out.
absl::Status SelectBlocksAcrossRanks(Communicator& sp, std::span<const SelectionRow> rows,
                                     SelectionScratch* scratch = nullptr);

// One sequence: rows are its KV heads, with local_scores [num_kv_heads][local_blocks.size()]
// (e.g. from ScoreLocalBlocks with local_blocks = OwnedBlocks, or any order of this rank's blocks)
// and out [num_kv_heads][n].
absl::Status SelectBlocksAcrossRanks(Communicator& sp, const float* local_scores,
                                     std::span<const int32_t> local_blocks, int num_kv_heads,
                                     int32_t n, int32_t* out, SelectionScratch* scratch = nullptr);

// The blocks of a selection ([num_kv_heads][n], as from SelectBlocksAcrossRanks) that this rank
// owns, as sparse attention lists: out is resized to [num_kv_heads][stride], head h's owned
// blocks ascending, then padded with distinct block ids >= num_blocks, which the attention
// kernels mask completely (positions >= num_keys). Returns stride, the largest owned count
// (0 when this rank owns none of the selection).
int32_t OwnedSelection(const SequenceShard& shard, const int32_t* selected, int num_kv_heads,
                       int32_t n, int32_t num_blocks, std::vector<int32_t>* out);

// Reusable buffers of MergeAttentionStatesAcrossRanks (optional).
struct MergeScratch {
  std::vector<float> send;
  std::vector<float> recv;
};

// Merges the partial states of all ranks of `sp` over disjoint key sets, in place, so that every
// rank ends with the same (bit-identical) state: lse = logsumexp_r lse_r,
// O = sum_r exp(lse_r - lse) O_r, computed in rank order in double. Ranks with lse_r = -inf (no
// visible key) contribute nothing; when all are empty the result is O = 0, lse = -inf, never NaN.
// o is [n][head_dim], lse_ln is [n] (rows x heads flattened). Collective: one all-gather of
// S x n x (head_dim + 1) floats.
absl::Status MergeAttentionStatesAcrossRanks(Communicator& sp, float* o, float* lse_ln, int n,
                                             int head_dim, MergeScratch* scratch = nullptr);

}  // namespace resa
