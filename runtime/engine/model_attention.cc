// CpuModel's attention of one layer (cpu_model.h): block selection for sparse decode rows, then
// attention, on one rank or across the SP group (DESIGN.md §5).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/selection.h"
#include "runtime/core/status.h"
#include "runtime/core/sysinfo.h"
#include "runtime/engine/cpu_model.h"

namespace resa {

absl::Status CpuModel::Attention(int layer, std::span<const ForwardChunk> chunks) {
  const PagedKvLayer kv = cache_.layer(layer);
  RESA_RETURN_IF_ERROR(SelectBlocks(layer, kv, chunks));
  if (!sp_parallel()) {
    LocalAttention(kv, chunks);
    return absl::OkStatus();
  }
  return ShardedAttention(kv, chunks);
}

absl::Status CpuModel::SelectBlocks(int layer, const PagedKvLayer& kv,
                                    std::span<const ForwardChunk> chunks) {
  const ModelConfig& c = w_.config;
  const int hkv = w_.shard.num_kv_heads;
  // Which decode rows skip blocks: n and M depend on positions only, so every rank of the grid
  // finds the same rows (they size the collectives below).
  sparse_rows_.clear();
  size_t offset = 0;
  int64_t r = 0;
  for (size_t ci = 0; ci < chunks.size(); ++ci) {
    const ForwardChunk& ch = chunks[ci];
    if (ch.tokens.size() == 1 && ch.sparse != nullptr) {
      const int32_t num_keys = pos_[r] + 1;
      const int32_t m = (num_keys + kPageTokens - 1) / kPageTokens;
      const int32_t n = std::min(m, NumSelectedBlocks(m, ch.sparse->ratio, ch.sparse->min_blocks));
      stats_.blocks_total += int64_t(m) * c.num_kv_heads;
      stats_.blocks_read += int64_t(n) * c.num_kv_heads;
      // n == M: every block, which the dense path computes exactly.
      if (n < m) {
        sparse_rows_.push_back(SparseRow{r, int(ci), num_keys, m, n, offset});
        offset += size_t(hkv) * n;
      }
    }
    r += int64_t(ch.tokens.size());
  }
  if (sparse_rows_.empty()) return absl::OkStatus();
  Stopwatch sw;
  RESA_RETURN_IF_ERROR(PoolQueries());
  const int d = c.head_dim;
  selected_.resize(offset);
  if (!sp_parallel()) {
    for (size_t i = 0; i < sparse_rows_.size(); ++i) {
      const SparseRow& sr = sparse_rows_[i];
      scores_.resize(size_t(hkv) * sr.num_blocks);
      ScoreBlocks(kv, pooled_.data() + i * hkv * d, chunks[sr.chunk].seq->page_table.data(),
                  sr.num_keys, scores_.data());
      TopBlocks(scores_.data(), hkv, sr.num_blocks, sr.n, selected_.data() + sr.offset);
    }
  } else {
    // Local scores of every row, then one exchange for all rows x KV heads of the layer.
    const SequenceShard& shard = cache_.shard();
    size_t score_size = 0;
    for (const SparseRow& sr : sparse_rows_) {
      score_size += size_t(hkv) * shard.NumLocalBlocks(sr.num_blocks);
    }
    scores_.resize(score_size);
    std::vector<SelectionRow> rows;
    rows.reserve(sparse_rows_.size() * hkv);
    size_t at = 0;
    for (size_t i = 0; i < sparse_rows_.size(); ++i) {
      const SparseRow& sr = sparse_rows_[i];
      const int32_t local = shard.NumLocalBlocks(sr.num_blocks);
      ScoreLocalBlocks(kv, pooled_.data() + i * hkv * d, chunks[sr.chunk].seq->page_table.data(),
                       sr.num_keys, shard, scores_.data() + at);
      // owned_ of a decode row's chunk lists exactly the owned blocks of [0, M).
      const std::vector<int32_t>& owned = owned_[sr.chunk];
      for (int h = 0; h < hkv; ++h) {
        rows.push_back(SelectionRow{scores_.data() + at + size_t(h) * local, owned.data(), local,
                                    sr.n, selected_.data() + sr.offset + size_t(h) * sr.n});
      }
      at += size_t(hkv) * local;
    }
    RESA_RETURN_IF_ERROR(SelectBlocksAcrossRanks(*sp_, rows, &selection_scratch_));
  }
  stats_.selection_seconds += sw.Seconds();
  if (trace_) {
    for (const SparseRow& sr : sparse_rows_) {
      for (int h = 0; h < hkv; ++h) {
        trace_(layer, w_.shard.kv_head_begin + h, sr.row,
               std::span<const int32_t>(selected_.data() + sr.offset + size_t(h) * sr.n, sr.n));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CpuModel::PoolQueries() {
  const ModelConfig& c = w_.config;
  const TpShard& ts = w_.shard;
  const int g = c.group_size(), d = c.head_dim, hkv = ts.num_kv_heads;
  const int lq = ts.num_heads * d;
  const size_t ns = sparse_rows_.size();
  // Query head j of the model, of sparse row i: local, or gathered from the TP rank holding it
  // when the group of a replicated KV head is split over several ranks.
  const float* base = q_.data();
  size_t row_stride = lq, rank_stride = 0;
  if (ts.kv_replicas > 1) {
    std::vector<float> mine(ns * lq);
    for (size_t i = 0; i < ns; ++i) {
      std::copy_n(q_.data() + size_t(sparse_rows_[i].row) * lq, lq, mine.data() + i * lq);
    }
    gathered_q_.resize(size_t(tp_->size()) * ns * lq);
    RESA_RETURN_IF_ERROR(
        tp_->AllGather(std::span<const float>(mine), std::span<float>(gathered_q_)));
    base = gathered_q_.data();
    rank_stride = ns * lq;
  }
  auto head = [&](size_t i, int j) -> const float* {
    if (ts.kv_replicas > 1) {
      return base + size_t(j / ts.num_heads) * rank_stride + i * row_stride +
             size_t(j % ts.num_heads) * d;
    }
    return base + size_t(sparse_rows_[i].row) * row_stride + size_t(j - ts.head_begin) * d;
  };
  pooled_.assign(ns * hkv * d, 0.0f);
  for (size_t i = 0; i < ns; ++i) {
    for (int h = 0; h < hkv; ++h) {
      const int kh = ts.kv_head_begin + h;
      float* pq = pooled_.data() + (i * hkv + h) * d;
      for (int j = 0; j < g; ++j) {
        const float* qj = head(i, kh * g + j);
        for (int k = 0; k < d; ++k) pq[k] += qj[k];
      }
      for (int k = 0; k < d; ++k) pq[k] /= float(g);
    }
  }
  return absl::OkStatus();
}

// One SP rank holds every block: prefill/rectification chunks through the GEMM-tiled causal
// kernel, decode rows gathered into one paged-attention call per kind (dense, sparse).
void CpuModel::LocalAttention(const PagedKvLayer& kv, std::span<const ForwardChunk> chunks) {
  const ModelConfig& c = w_.config;
  const AttentionParams p{w_.shard.num_heads, 1.0f / std::sqrt(float(c.head_dim))};
  const int lq = w_.shard.num_heads * c.head_dim;
  std::vector<AttentionRow> dense, sparse;
  std::vector<int64_t> dense_row, sparse_row;
  size_t next_sparse = 0;
  int64_t r = 0;
  for (const ForwardChunk& ch : chunks) {
    const int n = int(ch.tokens.size());
    if (n == 1) {
      const int32_t num_keys = pos_[r] + 1;
      if (next_sparse < sparse_rows_.size() && sparse_rows_[next_sparse].row == r) {
        const SparseRow& sr = sparse_rows_[next_sparse++];
        sparse.push_back(AttentionRow{ch.seq->page_table.data(), num_keys, true,
                                      selected_.data() + sr.offset, sr.n, sr.n});
        sparse_row.push_back(r);
      } else {
        dense.push_back(AttentionRow{ch.seq->page_table.data(), num_keys});
        dense_row.push_back(r);
      }
    } else if (n > 1) {
      PagedChunkAttention(kv, p, q_.data() + size_t(r) * lq, n, ch.seq->page_table.data(),
                          pos_[r] + 1, attn_.data() + size_t(r) * lq, nullptr);
    }
    r += n;
  }
  // Decode rows: gather their queries contiguously, attend, scatter back.
  auto run = [&](std::vector<AttentionRow>& rows, const std::vector<int64_t>& at, double& secs) {
    if (rows.empty()) return;
    Stopwatch sw;
    std::vector<float> q(rows.size() * lq), o(rows.size() * lq);
    for (size_t i = 0; i < rows.size(); ++i) {
      std::copy_n(q_.data() + size_t(at[i]) * lq, lq, q.data() + i * lq);
    }
    PagedAttention(kv, p, q.data(), rows, o.data(), nullptr);
    for (size_t i = 0; i < rows.size(); ++i) {
      std::copy_n(o.data() + i * lq, lq, attn_.data() + size_t(at[i]) * lq);
    }
    secs += sw.Seconds();
  };
  run(dense, dense_row, stats_.dense_attention_seconds);
  run(sparse, sparse_row, stats_.sparse_attention_seconds);
}

// SP: every row attends over the blocks this rank owns (all of them up to its causal end for
// chunk rows and dense decode rows; the owned part of the global selection for sparse rows),
// then the partial states of all rows are merged across the SP group in one exchange, so every
// rank ends with the whole rows' attention. Prefill/rectification chunks run the GEMM-tiled
// chunk kernel over the owned blocks; single-token rows go through one paged-attention call.
absl::Status CpuModel::ShardedAttention(const PagedKvLayer& kv,
                                        std::span<const ForwardChunk> chunks) {
  const ModelConfig& c = w_.config;
  const int hkv = w_.shard.num_kv_heads, lh = w_.shard.num_heads, d = c.head_dim;
  const int lq = lh * d;
  const AttentionParams p{lh, 1.0f / std::sqrt(float(d))};
  const SequenceShard& shard = cache_.shard();
  Stopwatch sw;
  mine_.resize(sparse_rows_.size());
  mine_stride_.resize(sparse_rows_.size());
  for (size_t i = 0; i < sparse_rows_.size(); ++i) {
    const SparseRow& sr = sparse_rows_[i];
    mine_stride_[i] =
        OwnedSelection(shard, selected_.data() + sr.offset, hkv, sr.n, sr.num_blocks, &mine_[i]);
  }
  int64_t total_rows = 0;
  for (const ForwardChunk& ch : chunks) total_rows += int64_t(ch.tokens.size());
  lse_.resize(size_t(total_rows) * lh);
  rows_.clear();
  std::vector<int64_t> row_at;  // batch row of each entry of rows_
  size_t next_sparse = 0;
  int64_t r = 0;
  for (size_t ci = 0; ci < chunks.size(); ++ci) {
    const int32_t* table = expanded_[ci].data();
    const std::vector<int32_t>& owned = owned_[ci];
    const int n = int(chunks[ci].tokens.size());
    if (n > 1) {
      PagedChunkAttention(kv, p, q_.data() + size_t(r) * lq, n, table, pos_[r] + 1, owned,
                          attn_.data() + size_t(r) * lq, lse_.data() + size_t(r) * lh);
      r += n;
      continue;
    }
    for (int i = 0; i < n; ++i, ++r) {
      const int32_t num_keys = pos_[r] + 1;
      if (next_sparse < sparse_rows_.size() && sparse_rows_[next_sparse].row == r) {
        const int32_t stride = mine_stride_[next_sparse];
        rows_.push_back(
            AttentionRow{table, num_keys, true, mine_[next_sparse].data(), stride, stride});
        ++next_sparse;
      } else {
        // Keys past num_keys in later owned blocks are masked by the kernel.
        rows_.push_back(
            AttentionRow{table, num_keys, true, owned.data(), int32_t(owned.size()), 0});
      }
      row_at.push_back(r);
    }
  }
  if (!rows_.empty()) {
    // Single-token rows: queries gathered contiguously, attended at once, scattered back.
    std::vector<float> decode_q(rows_.size() * lq), decode_o(rows_.size() * lq),
        decode_lse(rows_.size() * lh);
    for (size_t i = 0; i < rows_.size(); ++i) {
      std::copy_n(q_.data() + size_t(row_at[i]) * lq, lq, decode_q.data() + i * lq);
    }
    PagedAttention(kv, p, decode_q.data(), rows_, decode_o.data(), decode_lse.data());
    for (size_t i = 0; i < rows_.size(); ++i) {
      std::copy_n(decode_o.data() + i * lq, lq, attn_.data() + size_t(row_at[i]) * lq);
      std::copy_n(decode_lse.data() + i * lh, lh, lse_.data() + size_t(row_at[i]) * lh);
    }
  }
  RESA_RETURN_IF_ERROR(MergeAttentionStatesAcrossRanks(*sp_, attn_.data(), lse_.data(),
                                                       int(total_rows) * lh, d, &merge_scratch_));
  (sparse_rows_.empty() ? stats_.dense_attention_seconds : stats_.sparse_attention_seconds) +=
      sw.Seconds();
  return absl::OkStatus();
}

}  // namespace resa
