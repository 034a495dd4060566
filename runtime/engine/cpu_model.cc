#include "runtime/engine/cpu_model.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/selection.h"
#include "runtime/core/status.h"
#include "runtime/core/sysinfo.h"

namespace resa {

absl::StatusOr<std::unique_ptr<CpuModel>> CpuModel::Create(const CpuWeights& weights,
                                                           KvCache& cache, ModelGroups groups) {
  const TpShard& ts = weights.shard;
  const int tp_size = groups.tp != nullptr ? groups.tp->size() : 1;
  const int tp_rank = groups.tp != nullptr ? groups.tp->rank() : 0;
  if (tp_size != ts.size || tp_rank != ts.rank) {
    return absl::InvalidArgumentError(absl::StrCat("weights of TP rank ", ts.rank, " of ", ts.size,
                                                   " used by TP rank ", tp_rank, " of ", tp_size));
  }
  const SequenceShard& ss = cache.shard();
  const int sp_size = groups.sp != nullptr ? groups.sp->size() : 1;
  const int sp_rank = groups.sp != nullptr ? groups.sp->rank() : 0;
  if (sp_size != ss.size || sp_rank != ss.rank) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache of SP rank ", ss.rank, " of ", ss.size,
                                                   " used by SP rank ", sp_rank, " of ", sp_size));
  }
  if (cache.layer(0).num_kv_heads != ts.num_kv_heads) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache holds ", cache.layer(0).num_kv_heads,
                                                   " KV heads, the TP shard ", ts.num_kv_heads));
  }
  for (Communicator* comm : {groups.tp, groups.sp}) {
    if (comm != nullptr && comm->buffer_location() != BufferLocation::kHost) {
      return absl::InvalidArgumentError(
          absl::StrCat(comm->Describe(), ": the CPU model needs a host-buffer communicator"));
    }
  }
  return std::make_unique<CpuModel>(weights, cache, groups);
}

absl::StatusOr<int64_t> CheckChunks(std::span<const ForwardChunk> chunks, int vocab_size,
                                    std::vector<int32_t>& starts) {
  int64_t rows = 0;
  starts.clear();
  for (const ForwardChunk& ch : chunks) {
    if (ch.seq == nullptr) return absl::InvalidArgumentError("forward chunk without a sequence");
    for (int32_t t : ch.tokens) {
      if (t < 0 || t >= vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", t, " is outside the vocabulary [0, ", vocab_size, ")"));
      }
    }
    const int32_t start = ch.start < 0 ? ch.seq->length : ch.start;
    if (start > ch.seq->length) {
      return absl::InvalidArgumentError(absl::StrCat("chunk starts at position ", start,
                                                     " past the sequence end ", ch.seq->length));
    }
    if (ch.sparse != nullptr && ch.tokens.size() != 1) {
      return absl::InvalidArgumentError("sparse attention applies to single-token decode rows");
    }
    starts.push_back(start);
    rows += int64_t(ch.tokens.size());
  }
  return rows;
}

int64_t CpuModel::NumLogitRows(std::span<const ForwardChunk> chunks) {
  int64_t n = 0;
  for (const ForwardChunk& c : chunks) {
    if (c.logits == LogitsMode::kLast && !c.tokens.empty()) n += 1;
    if (c.logits == LogitsMode::kAll) n += int64_t(c.tokens.size());
  }
  return n;
}

bool CpuModel::HasSparseRows(std::span<const ForwardChunk> chunks) {
  for (const ForwardChunk& c : chunks) {
    if (c.sparse != nullptr && !c.tokens.empty()) return true;
  }
  return false;
}

bool CpuModel::CanReduceLastLayer(std::span<const ForwardChunk> chunks) const {
  if (sp_parallel()) return false;
  bool any = false;
  for (const ForwardChunk& c : chunks) {
    if (c.tokens.size() <= 1) continue;
    if (c.logits != LogitsMode::kLast) return false;
    any = true;
  }
  return any;
}

int64_t CpuModel::ReduceLastLayer(std::span<const ForwardChunk> chunks) {
  const int hid = w_.config.hidden_size, lq = w_.shard.num_heads * w_.config.head_dim;
  last_chunks_.clear();
  int64_t src = 0, dst = 0;  // dst <= src: rows move down, each read before it is overwritten
  for (const ForwardChunk& ch : chunks) {
    ForwardChunk one = ch;
    const int64_t n = int64_t(ch.tokens.size());
    if (n > 0) {
      const int64_t row = src + n - 1;
      std::copy_n(q_.data() + size_t(row) * lq, lq, q_.data() + size_t(dst) * lq);
      std::copy_n(h_.data() + size_t(row) * hid, hid, h_.data() + size_t(dst) * hid);
      pos_[dst] = pos_[row];
      row_seq_[dst] = row_seq_[row];
      one.tokens = ch.tokens.subspan(size_t(n - 1));
      one.start = pos_[row];
      ++dst;
    }
    last_chunks_.push_back(one);
    src += n;
  }
  return dst;
}

absl::Status CpuModel::Forward(std::span<const ForwardChunk> chunks, float* logits) {
  const ModelConfig& c = w_.config;
  RESA_ASSIGN_OR_RETURN(const int64_t rows, CheckChunks(chunks, c.vocab_size, chunk_start_));
  if (rows == 0) return absl::OkStatus();
  // Reserve every page first so a full cache fails before any state changes.
  std::vector<size_t> reserved_before;
  RESA_RETURN_IF_ERROR(ReserveChunks(chunks, chunk_start_, cache_, reserved_before));

  // Local extents of this rank's TP shard (the model's own on one rank).
  const TpShard& ts = w_.shard;
  const int hid = c.hidden_size, d = c.head_dim;
  const int lq = ts.num_heads * d, lkv = ts.num_kv_heads * d, li = ts.inter_size;
  const int qkv_dim = lq + 2 * lkv;
  h_.resize(size_t(rows) * hid);
  x_.resize(size_t(rows) * hid);
  qkv_.resize(size_t(rows) * qkv_dim);
  q_.resize(size_t(rows) * lq);
  attn_.resize(size_t(rows) * lq);
  proj_.resize(size_t(rows) * hid);
  gu_.resize(size_t(rows) * 2 * li);
  act_.resize(size_t(rows) * li);
  pos_.resize(rows);
  row_seq_.resize(rows);

  int64_t r = 0;
  for (size_t ci = 0; ci < chunks.size(); ++ci) {
    const ForwardChunk& ch = chunks[ci];
    for (size_t i = 0; i < ch.tokens.size(); ++i, ++r) {
      const float* e = w_.embed.data() + size_t(ch.tokens[i]) * hid;
      std::copy(e, e + hid, h_.data() + size_t(r) * hid);
      pos_[r] = chunk_start_[ci] + int32_t(i);
      row_seq_[r] = int32_t(ci);
    }
  }
  const SequenceShard& shard = cache_.shard();
  if (sp_parallel()) {
    // Page tables by logical block and owned blocks, up to each chunk's end (fixed this forward).
    expanded_.resize(chunks.size());
    owned_.resize(chunks.size());
    for (size_t ci = 0; ci < chunks.size(); ++ci) {
      const int32_t end = chunk_start_[ci] + int32_t(chunks[ci].tokens.size());
      const int32_t m = (end + kPageTokens - 1) / kPageTokens;
      expanded_[ci] = ExpandLocalPageTable(shard, chunks[ci].seq->page_table.data(), m);
      owned_[ci] = OwnedBlocks(shard, m);
    }
  }

  const LinearShape qkv_shape{int(rows), hid, qkv_dim};
  // With no logits asked for (a rectification pass, a non-final prefill chunk), nothing reads the
  // last layer's output: its K/V depend only on its input, so it stops after writing them. Sparse
  // rows keep the whole layer (their selection of the last layer is traced and counted).
  const bool kv_only_last = NumLogitRows(chunks) == 0 && !HasSparseRows(chunks);
  // Chunks that all want only their last row's logits: the last layer attends, projects and runs
  // the MLP for one row a chunk (the others' K/V are written first; nothing reads their output).
  const bool reduce_last = !kv_only_last && CanReduceLastLayer(chunks);
  int64_t n = rows;  // rows of the layer's attention and MLP
  for (int l = 0; l < c.num_layers; ++l) {
    const CpuLayerWeights& lw = w_.layers[l];
    RmsNorm(h_.data(), lw.input_norm.data(), int(rows), hid, c.rms_norm_eps, x_.data());
    Linear(qkv_shape, x_.data(), lw.qkv.data(), lw.qkv_bias.empty() ? nullptr : lw.qkv_bias.data(),
           qkv_.data());
    // q to its own buffer; k, v stay in qkv_ and are roped / written from there.
    for (int64_t i = 0; i < rows; ++i) {
      float* src = qkv_.data() + size_t(i) * qkv_dim;
      std::copy(src, src + lq, q_.data() + size_t(i) * lq);
    }
    RopeNeox(q_.data(), int(rows), ts.num_heads, d, pos_.data(), c.rope_theta);
    PagedKvLayer kv = cache_.layer(l);
    // Only the owner of a position's block (SP rank block % S) stores its K/V.
    for (int64_t i = 0; i < rows; ++i) {
      const int32_t block = pos_[i] / kPageTokens;
      if (!shard.Owns(block)) continue;
      float* k = qkv_.data() + size_t(i) * qkv_dim + lq;
      RopeNeox(k, 1, ts.num_kv_heads, d, &pos_[i], c.rope_theta);
      const SequenceKv& s = *chunks[row_seq_[i]].seq;
      WriteTokenKv(kv, cache_.Page(s, block), pos_[i] % kPageTokens, k, k + lkv);
    }
    // Rewritten ranges: WriteTokenKv only widens a summary mid-page, so recompute the pages.
    for (size_t ci = 0; ci < chunks.size(); ++ci) {
      const ForwardChunk& ch = chunks[ci];
      const int32_t start = chunk_start_[ci];
      if (start >= ch.seq->length || ch.tokens.empty()) continue;
      const int32_t end = std::max(ch.seq->length, start + int32_t(ch.tokens.size()));
      const int32_t last = start + int32_t(ch.tokens.size()) - 1;
      for (int32_t b = start / kPageTokens; b <= last / kPageTokens; ++b) {
        if (!shard.Owns(b)) continue;
        RecomputeSummary(kv, cache_.Page(*ch.seq, b), std::min(kPageTokens, end - b * kPageTokens));
      }
    }
    if (kv_only_last && l == c.num_layers - 1) break;
    std::span<const ForwardChunk> att = chunks;
    if (reduce_last && l == c.num_layers - 1) {
      n = ReduceLastLayer(chunks);
      att = last_chunks_;
    }
    RESA_RETURN_IF_ERROR(Attention(l, att));
    // Row-parallel projections: each TP rank holds a partial sum of the output.
    const std::span<float> proj(proj_.data(), size_t(n) * hid);
    Linear(LinearShape{int(n), lq, hid}, attn_.data(), lw.o.data(), nullptr, proj_.data());
    if (tp_parallel()) RESA_RETURN_IF_ERROR(tp_->AllReduce(proj));
    AddInPlace(h_.data(), proj_.data(), int64_t(n) * hid);
    RmsNorm(h_.data(), lw.post_norm.data(), int(n), hid, c.rms_norm_eps, x_.data());
    Linear(LinearShape{int(n), hid, 2 * li}, x_.data(), lw.gate_up.data(), nullptr, gu_.data());
    for (int64_t i = 0; i < n; ++i) {
      const float* g = gu_.data() + size_t(i) * 2 * li;
      SiluMul(g, g + li, li, act_.data() + size_t(i) * li);
    }
    Linear(LinearShape{int(n), li, hid}, act_.data(), lw.down.data(), nullptr, proj_.data());
    if (tp_parallel()) RESA_RETURN_IF_ERROR(tp_->AllReduce(proj));
    AddInPlace(h_.data(), proj_.data(), int64_t(n) * hid);
  }

  // Final norm and lm_head over the rows whose logits were asked for (after ReduceLastLayer a
  // chunk's last row is its index among the non-empty chunks).
  std::vector<int64_t> logit_rows;
  r = 0;
  int64_t kept = 0;
  for (size_t ci = 0; ci < chunks.size(); ++ci) {
    const ForwardChunk& ch = chunks[ci];
    const int64_t k = int64_t(ch.tokens.size());
    const int64_t last = reduce_last ? kept : r + k - 1;
    if (ch.logits == LogitsMode::kAll) {  // one row when reduced (multi-token chunks are kLast)
      for (int64_t i = 0; i < k; ++i) logit_rows.push_back(last - (k - 1) + i);
    } else if (ch.logits == LogitsMode::kLast && k > 0) {
      logit_rows.push_back(last);
    }
    r += k;
    if (k > 0) ++kept;
    ch.seq->length = std::max(ch.seq->length, chunk_start_[ci] + int32_t(k));
  }
  return Logits(logit_rows, logits);
}

absl::Status CpuModel::Logits(std::span<const int64_t> logit_rows, float* logits) {
  if (logit_rows.empty()) return absl::OkStatus();
  const ModelConfig& c = w_.config;
  const TpShard& ts = w_.shard;
  const int hid = c.hidden_size;
  const int64_t nl = int64_t(logit_rows.size());
  for (int64_t i = 0; i < nl; ++i) {
    RmsNorm(h_.data() + size_t(logit_rows[i]) * hid, w_.final_norm.data(), 1, hid, c.rms_norm_eps,
            x_.data() + size_t(i) * hid);
  }
  if (!tp_parallel()) {
    Linear(LinearShape{int(nl), hid, c.vocab_size}, x_.data(), w_.lm_head_data(), nullptr, logits);
    return absl::OkStatus();
  }
  // Vocab-parallel lm_head: local rows padded to vocab_chunk, all-gathered, then laid out
  // [rows][vocab] (rank t holds vocabulary [t * chunk, (t + 1) * chunk)).
  const int chunk = ts.vocab_chunk, T = tp_->size();
  logits_local_.assign(size_t(nl) * chunk, 0.0f);
  logits_all_.resize(size_t(T) * nl * chunk);
  if (ts.vocab_size > 0) {
    Linear(LinearShape{int(nl), hid, ts.vocab_size}, x_.data(), w_.lm_head_data(), nullptr,
           logits_all_.data());
    for (int64_t i = nl - 1; i >= 0; --i) {
      std::copy_n(logits_all_.data() + size_t(i) * ts.vocab_size, ts.vocab_size,
                  logits_local_.data() + size_t(i) * chunk);
    }
  }
  RESA_RETURN_IF_ERROR(
      tp_->AllGather(std::span<const float>(logits_local_), std::span<float>(logits_all_)));
  for (int t = 0; t < T; ++t) {
    const int begin = std::min(c.vocab_size, t * chunk);
    const int n = std::min(c.vocab_size, (t + 1) * chunk) - begin;
    for (int64_t i = 0; i < nl; ++i) {
      std::copy_n(logits_all_.data() + (size_t(t) * nl + i) * chunk, n,
                  logits + size_t(i) * c.vocab_size + begin);
    }
  }
  return absl::OkStatus();
}

}  // namespace resa
