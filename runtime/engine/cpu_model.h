// The Llama/Qwen2 decoder forward on the CPU over a batch of sequence chunks.
//
// A batch mixes prefill chunks (many tokens of one sequence) and decode rows (one token each) of
// sequences at different positions. All rows go through each linear layer together (OpenBLAS
// GEMM for many rows, the streaming GEMV for a few); attention runs per chunk (GEMM-tiled causal
// attention) or for all single-token rows at once (paged decode attention).
//
// Distributed (DESIGN.md §5): the same Forward runs on every rank of a TP x SP grid. The weights
// hold the rank's TpShard (heads, MLP columns, lm_head rows) and the cache its KV heads and SP
// blocks. Per layer: QKV and gate/up are column-parallel, o_proj and down row-parallel with one
// all-reduce each over the TP group; every SP rank computes q/k/v for all rows and the owner of a
// position's block writes its K/V and summary; each rank attends over its own blocks (dense rows
// and prefill/rectification chunks: all owned blocks with causal masking; sparse rows: the owned
// part of the global top-n chosen by SelectBlocksAcrossRanks) and the partial (O, lse_ln) states
// are merged across the SP group; logits are all-gathered over the TP group. Groups of one (null
// communicators) take none of these steps: one process runs exactly the single-rank code path.
// Every rank of the grid must call Forward with the same chunks (same tokens and positions).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cpu/attention.h"
#include "parallel/communicator.h"
#include "parallel/sp_attention.h"
#include "runtime/engine/cpu_weights.h"
#include "runtime/engine/kv_cache.h"

namespace resa {

enum class LogitsMode {
  kNone,  // only fill the cache (e.g. a non-final prefill chunk)
  kLast,  // logits of the chunk's last token
  kAll,   // logits of every token of the chunk
};

// Block-sparse decode attention (resa-spec.md §2.4-2.7): per layer and KV head, keep the top
// n = max(ceil(ratio * M), min(M, min_blocks)) of the M blocks by the Quest bound of the group's
// mean query; the block holding the current token is always kept. n == M runs the dense path.
struct SparseAttention {
  float ratio = 0.1f;
  int32_t min_blocks = 16;
};

struct ForwardChunk {
  SequenceKv* seq = nullptr;
  std::span<const int32_t> tokens;
  LogitsMode logits = LogitsMode::kLast;
  // First position written. -1 appends at seq->length. A start below seq->length rewrites the
  // K/V of [start, start + n) in place (rectification): every layer recomputes them densely and
  // causally and the summaries of the pages touched are recomputed.
  int32_t start = -1;
  // Single-token chunks only: attend to selected blocks instead of the whole context.
  const SparseAttention* sparse = nullptr;
};

// What every backend checks before a forward: each chunk has a sequence, its token ids are in
// the vocabulary, it starts within the sequence, and sparse attention is asked for single-token
// rows only. starts[i] receives the first position chunk i writes; returns the total rows.
absl::StatusOr<int64_t> CheckChunks(std::span<const ForwardChunk> chunks, int vocab_size,
                                    std::vector<int32_t>& starts);

// Reserves the pages every chunk needs, all or nothing: when one reservation fails, the earlier
// ones are undone and the cache is as before. reserved_before[i] receives chunk i's page count
// before, so a later failure can undo them with `cache.ShrinkPages`. Works with any cache that
// has Reserve(SequenceKv&, int32_t) and ShrinkPages(SequenceKv&, size_t) (host or device).
template <typename Cache>
absl::Status ReserveChunks(std::span<const ForwardChunk> chunks, std::span<const int32_t> starts,
                           Cache& cache, std::vector<size_t>& reserved_before) {
  reserved_before.clear();
  for (size_t i = 0; i < chunks.size(); ++i) {
    const ForwardChunk& ch = chunks[i];
    reserved_before.push_back(ch.seq->page_table.size());
    absl::Status st = cache.Reserve(*ch.seq, starts[i] + int32_t(ch.tokens.size()));
    if (!st.ok()) {
      for (size_t j = 0; j < i; ++j) cache.ShrinkPages(*chunks[j].seq, reserved_before[j]);
      reserved_before.clear();
      return st;
    }
  }
  return absl::OkStatus();
}

// Where a forward's time and traffic went (accumulated across calls until reset).
struct ForwardStats {
  double selection_seconds = 0.0;  // pooled query, block scores, top-n
  double sparse_attention_seconds = 0.0;
  double dense_attention_seconds = 0.0;  // decode rows attending to everything
  int64_t blocks_read = 0;               // (row, layer, KV head) blocks attended by sparse rows
  int64_t blocks_total = 0;              // blocks a dense step would have read for those rows
  // False on the CUDA backend, whose steps run as graphs: the phase seconds above stay 0 there,
  // since selection and attention are not timed apart from the rest of the step.
  bool phases_timed = true;
};

// The groups this rank's shard works with. Null stands for a group of one (this rank alone).
struct ModelGroups {
  Communicator* tp = nullptr;  // size weights.shard.size, ranked by TP rank
  Communicator* sp = nullptr;  // size cache.shard().size, ranked by SP rank
};

// Debug hook, called for every decode row that selects fewer blocks than it has, per layer and
// local KV head (`kv_head` is the model's index), with the selected blocks ascending. `row` is the
// row's index in the forward's batch.
using SelectionTrace =
    std::function<void(int layer, int kv_head, int64_t row, std::span<const int32_t> blocks)>;

class CpuModel {
 public:
  // Without groups: one rank (a 1 x 1 grid), weights and cache unsharded. With groups, the
  // weights' and cache's shards must match them: use Create, which checks it.
  CpuModel(const CpuWeights& weights, KvCache& cache, ModelGroups groups = {})
      : w_(weights), cache_(cache), tp_(groups.tp), sp_(groups.sp) {}
  // Checks that the weights' TpShard, the cache's shard and the groups agree (sizes and ranks).
  static absl::StatusOr<std::unique_ptr<CpuModel>> Create(const CpuWeights& weights, KvCache& cache,
                                                          ModelGroups groups);

  // Runs the chunks, appends their K/V (advancing each seq->length) and writes the requested
  // logits row after row in chunk order into `logits` ([rows][vocab]), which must be large
  // enough (NumLogitRows). With no logits asked for and no sparse rows, the last layer stops
  // once its K/V are written (nothing reads its output). Token ids are checked against the
  // vocabulary, and pages are reserved before anything is written, so an error leaves the cache
  // and sequences unchanged; in a grid, a failed collective is the exception (it breaks the
  // communicator: end the job).
  absl::Status Forward(std::span<const ForwardChunk> chunks, float* logits);

  void set_selection_trace(SelectionTrace trace) { trace_ = std::move(trace); }

  static int64_t NumLogitRows(std::span<const ForwardChunk> chunks);
  // Whether any non-empty chunk asks for sparse attention.
  static bool HasSparseRows(std::span<const ForwardChunk> chunks);
  // Whether the last layer may run on each chunk's last row only: every multi-token chunk asks
  // for its last row's logits (kLast) and there is at least one; not under SP.
  bool CanReduceLastLayer(std::span<const ForwardChunk> chunks) const;
  // Moves each chunk's last row (q, residual, position) to row = its chunk's index among the
  // non-empty chunks and fills last_chunks_ with one-token chunks; returns the row count.
  int64_t ReduceLastLayer(std::span<const ForwardChunk> chunks);
  const ModelConfig& config() const { return w_.config; }
  const ForwardStats& stats() const { return stats_; }
  void ResetStats() { stats_ = ForwardStats{}; }

 private:
  // A decode row that attends to a top-n subset of its blocks.
  struct SparseRow {
    int64_t row;
    int chunk;
    int32_t num_keys, num_blocks, n;
    size_t offset;  // of its selection in selected_: [local KV heads][n]
  };
  // model_attention.cc: selection and attention of one layer for every row of the batch, q_ in,
  // attn_ out (merged across the SP group).
  absl::Status Attention(int layer, std::span<const ForwardChunk> chunks);
  absl::Status SelectBlocks(int layer, const PagedKvLayer& kv,
                            std::span<const ForwardChunk> chunks);
  // pooled_ [sparse rows][local KV heads][head_dim]: the mean of each KV head's whole group of
  // queries, summed in head order as one rank does (gathered over TP when KV heads replicate).
  absl::Status PoolQueries();
  void LocalAttention(const PagedKvLayer& kv, std::span<const ForwardChunk> chunks);
  absl::Status ShardedAttention(const PagedKvLayer& kv, std::span<const ForwardChunk> chunks);
  absl::Status Logits(std::span<const int64_t> logit_rows, float* logits);
  bool tp_parallel() const { return tp_ != nullptr && tp_->size() > 1; }
  bool sp_parallel() const { return sp_ != nullptr && sp_->size() > 1; }

  const CpuWeights& w_;
  KvCache& cache_;
  Communicator* tp_;
  Communicator* sp_;
  SelectionTrace trace_;
  // Workspaces, grown on demand and reused across steps.
  std::vector<float> h_, x_, qkv_, q_, attn_, proj_, gu_, act_, lse_;
  // The last layer's chunks when only each chunk's last row goes on (ReduceLastLayer).
  std::vector<ForwardChunk> last_chunks_;
  std::vector<int32_t> pos_;
  std::vector<int32_t> row_seq_;
  std::vector<int32_t> chunk_start_;
  std::vector<float> pooled_, scores_, gathered_q_, logits_local_, logits_all_;
  std::vector<SparseRow> sparse_rows_;
  std::vector<int32_t> selected_;
  // SP: per chunk, its page table by logical block and the blocks this rank owns (up to the end
  // of the chunk); per sparse row, the owned part of its selection.
  std::vector<std::vector<int32_t>> expanded_, owned_, mine_;
  std::vector<int32_t> mine_stride_;
  std::vector<AttentionRow> rows_;
  SelectionScratch selection_scratch_;
  MergeScratch merge_scratch_;
  ForwardStats stats_;
};

}  // namespace resa
