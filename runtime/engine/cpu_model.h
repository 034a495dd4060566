// The Llama/Qwen2 decoder forward on the CPU over a batch of sequence chunks.
//
// A batch mixes prefill chunks (many tokens of one sequence) and decode rows (one token each) of
// sequences at different positions. All rows go through each linear layer together (OpenBLAS
// GEMM for many rows, the streaming GEMV for a few); attention runs per chunk (GEMM-tiled causal
// attention) or for all single-token rows at once (paged decode attention).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
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

// Where a forward's time and traffic went (accumulated across calls until reset).
struct ForwardStats {
  double selection_seconds = 0.0;        // pooled query, block scores, top-n
  double sparse_attention_seconds = 0.0;
  double dense_attention_seconds = 0.0;  // decode rows attending to everything
  int64_t blocks_read = 0;               // (row, layer, KV head) blocks attended by sparse rows
  int64_t blocks_total = 0;              // blocks a dense step would have read for those rows
};

class CpuModel {
 public:
  CpuModel(const CpuWeights& weights, KvCache& cache) : w_(weights), cache_(cache) {}

  // Runs the chunks, appends their K/V (advancing each seq->length) and writes the requested
  // logits row after row in chunk order into `logits` ([rows][vocab]), which must be large
  // enough (NumLogitRows). Token ids are checked against the vocabulary, and pages are reserved
  // before anything is written, so an error leaves the cache and sequences unchanged.
  absl::Status Forward(std::span<const ForwardChunk> chunks, float* logits);

  static int64_t NumLogitRows(std::span<const ForwardChunk> chunks);
  const ModelConfig& config() const { return w_.config; }
  const ForwardStats& stats() const { return stats_; }
  void ResetStats() { stats_ = ForwardStats{}; }

 private:
  void Attention(int layer, std::span<const ForwardChunk> chunks, const int32_t* positions);
  // Selects blocks for one sparse decode row; returns n (blocks per KV head) written to `out`.
  int32_t SelectBlocks(const PagedKvLayer& kv, const float* q, const SequenceKv& seq,
                       int32_t num_keys, const SparseAttention& sparse, std::vector<int32_t>& out);

  const CpuWeights& w_;
  KvCache& cache_;
  // Workspaces, grown on demand and reused across steps.
  std::vector<float> h_, x_, qkv_, q_, attn_, proj_, gu_, act_;
  std::vector<int32_t> pos_;
  std::vector<int32_t> row_seq_;
  std::vector<int32_t> chunk_start_;
  std::vector<float> pooled_, scores_;
  ForwardStats stats_;
};

}  // namespace resa
