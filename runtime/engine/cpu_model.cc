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

int64_t CpuModel::NumLogitRows(std::span<const ForwardChunk> chunks) {
  int64_t n = 0;
  for (const ForwardChunk& c : chunks) {
    if (c.logits == LogitsMode::kLast && !c.tokens.empty()) n += 1;
    if (c.logits == LogitsMode::kAll) n += int64_t(c.tokens.size());
  }
  return n;
}

absl::Status CpuModel::Forward(std::span<const ForwardChunk> chunks, float* logits) {
  const ModelConfig& c = w_.config;
  int64_t rows = 0;
  chunk_start_.clear();
  for (const ForwardChunk& ch : chunks) {
    if (ch.seq == nullptr) return absl::InvalidArgumentError("forward chunk without a sequence");
    for (int32_t t : ch.tokens) {
      if (t < 0 || t >= c.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", t, " is outside the vocabulary [0, ", c.vocab_size, ")"));
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
    chunk_start_.push_back(start);
    rows += int64_t(ch.tokens.size());
  }
  if (rows == 0) return absl::OkStatus();
  // Reserve every page first so a full cache fails before any state changes.
  std::vector<size_t> reserved_before;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const ForwardChunk& ch = chunks[i];
    reserved_before.push_back(ch.seq->page_table.size());
    absl::Status st = cache_.Reserve(*ch.seq, chunk_start_[i] + int32_t(ch.tokens.size()));
    if (!st.ok()) {
      for (size_t j = 0; j < i; ++j) cache_.ShrinkPages(*chunks[j].seq, reserved_before[j]);
      return st;
    }
  }

  const int hid = c.hidden_size, qd = c.q_dim(), kvd = c.kv_dim(), inter = c.intermediate_size;
  const int qkv_dim = qd + 2 * kvd;
  h_.resize(size_t(rows) * hid);
  x_.resize(size_t(rows) * hid);
  qkv_.resize(size_t(rows) * qkv_dim);
  q_.resize(size_t(rows) * qd);
  attn_.resize(size_t(rows) * qd);
  proj_.resize(size_t(rows) * hid);
  gu_.resize(size_t(rows) * 2 * inter);
  act_.resize(size_t(rows) * inter);
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

  const LinearShape qkv_shape{int(rows), hid, qkv_dim};
  const LinearShape o_shape{int(rows), qd, hid};
  const LinearShape gu_shape{int(rows), hid, 2 * inter};
  const LinearShape down_shape{int(rows), inter, hid};
  for (int l = 0; l < c.num_layers; ++l) {
    const CpuLayerWeights& lw = w_.layers[l];
    RmsNorm(h_.data(), lw.input_norm.data(), int(rows), hid, c.rms_norm_eps, x_.data());
    Linear(qkv_shape, x_.data(), lw.qkv.data(), lw.qkv_bias.empty() ? nullptr : lw.qkv_bias.data(),
           qkv_.data());
    // q to its own buffer; k, v stay in qkv_ and are roped / written from there.
    for (int64_t i = 0; i < rows; ++i) {
      float* src = qkv_.data() + size_t(i) * qkv_dim;
      std::copy(src, src + qd, q_.data() + size_t(i) * qd);
    }
    RopeNeox(q_.data(), int(rows), c.num_heads, c.head_dim, pos_.data(), c.rope_theta);
    PagedKvLayer kv = cache_.layer(l);
    for (int64_t i = 0; i < rows; ++i) {
      float* k = qkv_.data() + size_t(i) * qkv_dim + qd;
      RopeNeox(k, 1, c.num_kv_heads, c.head_dim, &pos_[i], c.rope_theta);
      const SequenceKv& s = *chunks[row_seq_[i]].seq;
      WriteTokenKv(kv, s.page_table[pos_[i] / kPageTokens], pos_[i] % kPageTokens, k, k + kvd);
    }
    // Rewritten ranges: WriteTokenKv only widens a summary mid-page, so recompute the pages.
    for (size_t ci = 0; ci < chunks.size(); ++ci) {
      const ForwardChunk& ch = chunks[ci];
      const int32_t start = chunk_start_[ci];
      if (start >= ch.seq->length || ch.tokens.empty()) continue;
      const int32_t end = std::max(ch.seq->length, start + int32_t(ch.tokens.size()));
      const int32_t last = start + int32_t(ch.tokens.size()) - 1;
      for (int32_t b = start / kPageTokens; b <= last / kPageTokens; ++b) {
        RecomputeSummary(kv, ch.seq->page_table[b], std::min(kPageTokens, end - b * kPageTokens));
      }
    }
    Attention(l, chunks, pos_.data());
    Linear(o_shape, attn_.data(), lw.o.data(), nullptr, proj_.data());
    AddInPlace(h_.data(), proj_.data(), int64_t(rows) * hid);
    RmsNorm(h_.data(), lw.post_norm.data(), int(rows), hid, c.rms_norm_eps, x_.data());
    Linear(gu_shape, x_.data(), lw.gate_up.data(), nullptr, gu_.data());
    for (int64_t i = 0; i < rows; ++i) {
      const float* g = gu_.data() + size_t(i) * 2 * inter;
      SiluMul(g, g + inter, inter, act_.data() + size_t(i) * inter);
    }
    Linear(down_shape, act_.data(), lw.down.data(), nullptr, proj_.data());
    AddInPlace(h_.data(), proj_.data(), int64_t(rows) * hid);
  }

  // Final norm and lm_head over the rows whose logits were asked for.
  std::vector<int64_t> logit_rows;
  r = 0;
  for (size_t ci = 0; ci < chunks.size(); ++ci) {
    const ForwardChunk& ch = chunks[ci];
    const int64_t n = int64_t(ch.tokens.size());
    if (ch.logits == LogitsMode::kAll) {
      for (int64_t i = 0; i < n; ++i) logit_rows.push_back(r + i);
    } else if (ch.logits == LogitsMode::kLast && n > 0) {
      logit_rows.push_back(r + n - 1);
    }
    r += n;
    ch.seq->length = std::max(ch.seq->length, chunk_start_[ci] + int32_t(n));
  }
  if (logit_rows.empty()) return absl::OkStatus();
  const int64_t nl = int64_t(logit_rows.size());
  for (int64_t i = 0; i < nl; ++i) {
    RmsNorm(h_.data() + size_t(logit_rows[i]) * hid, w_.final_norm.data(), 1, hid, c.rms_norm_eps,
            x_.data() + size_t(i) * hid);
  }
  Linear(LinearShape{int(nl), hid, c.vocab_size}, x_.data(), w_.lm_head_data(), nullptr, logits);
  return absl::OkStatus();
}

int32_t CpuModel::SelectBlocks(const PagedKvLayer& kv, const float* q, const SequenceKv& seq,
                               int32_t num_keys, const SparseAttention& sparse,
                               std::vector<int32_t>& out) {
  const ModelConfig& c = w_.config;
  const int32_t m = (num_keys + kPageTokens - 1) / kPageTokens;
  const int32_t n = NumSelectedBlocks(m, sparse.ratio, sparse.min_blocks);
  if (n >= m) return m;  // every block: the dense path computes exactly this
  const int g = c.group_size(), d = c.head_dim;
  pooled_.assign(size_t(c.num_kv_heads) * d, 0.0f);
  for (int h = 0; h < c.num_kv_heads; ++h) {
    float* pq = pooled_.data() + size_t(h) * d;
    for (int j = 0; j < g; ++j) {
      const float* qj = q + (size_t(h) * g + j) * d;
      for (int i = 0; i < d; ++i) pq[i] += qj[i];
    }
    for (int i = 0; i < d; ++i) pq[i] /= float(g);
  }
  scores_.resize(size_t(c.num_kv_heads) * m);
  ScoreBlocks(kv, pooled_.data(), seq.page_table.data(), num_keys, scores_.data());
  out.resize(size_t(c.num_kv_heads) * n);
  TopBlocks(scores_.data(), c.num_kv_heads, m, n, out.data());
  return n;
}

void CpuModel::Attention(int layer, std::span<const ForwardChunk> chunks,
                         const int32_t* positions) {
  const ModelConfig& c = w_.config;
  const PagedKvLayer kv = cache_.layer(layer);
  const AttentionParams p{c.num_heads, 1.0f / std::sqrt(float(c.head_dim))};
  const int qd = c.q_dim();
  std::vector<AttentionRow> dense, sparse;
  std::vector<int64_t> dense_row, sparse_row;
  std::vector<std::vector<int32_t>> selected;
  int64_t r = 0;
  for (const ForwardChunk& ch : chunks) {
    const int n = int(ch.tokens.size());
    if (n == 1) {
      const int32_t num_keys = positions[r] + 1;
      if (ch.sparse != nullptr) {
        Stopwatch sw;
        selected.emplace_back();
        const int32_t nsel = SelectBlocks(kv, q_.data() + size_t(r) * qd, *ch.seq, num_keys,
                                          *ch.sparse, selected.back());
        stats_.selection_seconds += sw.Seconds();
        const int32_t m = (num_keys + kPageTokens - 1) / kPageTokens;
        stats_.blocks_total += int64_t(m) * c.num_kv_heads;
        stats_.blocks_read += int64_t(nsel) * c.num_kv_heads;
        if (nsel < m) {
          sparse.push_back(AttentionRow{ch.seq->page_table.data(), num_keys, true,
                                        selected.back().data(), nsel, nsel});
          sparse_row.push_back(r);
          r += n;
          continue;
        }
      }
      dense.push_back(AttentionRow{ch.seq->page_table.data(), num_keys});
      dense_row.push_back(r);
    } else if (n > 1) {
      PagedChunkAttention(kv, p, q_.data() + size_t(r) * qd, n, ch.seq->page_table.data(),
                          positions[r] + 1, attn_.data() + size_t(r) * qd, nullptr);
    }
    r += n;
  }
  // Decode rows: gather their queries contiguously, attend, scatter back.
  auto run = [&](std::vector<AttentionRow>& rows, const std::vector<int64_t>& at, double& secs) {
    if (rows.empty()) return;
    Stopwatch sw;
    std::vector<float> q(rows.size() * qd), o(rows.size() * qd);
    for (size_t i = 0; i < rows.size(); ++i) {
      std::copy_n(q_.data() + size_t(at[i]) * qd, qd, q.data() + i * qd);
    }
    PagedAttention(kv, p, q.data(), rows, o.data(), nullptr);
    for (size_t i = 0; i < rows.size(); ++i) {
      std::copy_n(o.data() + i * qd, qd, attn_.data() + size_t(at[i]) * qd);
    }
    secs += sw.Seconds();
  };
  run(dense, dense_row, stats_.dense_attention_seconds);
  run(sparse, sparse_row, stats_.sparse_attention_seconds);
}

}  // namespace resa
