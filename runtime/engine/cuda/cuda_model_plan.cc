// CudaModel's planning (cuda_model_internal.h): how a forward's chunks become one plan (rows
// regrouped by attention kind, the int32 metadata uploaded as one block, the last layer's kept
// rows) and the launch parameters of one layer's attention.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/selection_cuda.h"
#include "runtime/core/status.h"
#include "runtime/engine/cuda/cuda_model_internal.h"
#include "runtime/engine/cuda/model_ops_cuda.h"

namespace resa::cuda {
namespace {

constexpr int32_t kContextBucket = 4096;  // graph keys round context lengths up to this
// Short chunk forwards: at most this many chunks of at most this many tokens, alone in their
// forward (rectification passes). They plan for their context bucket and, when they ask for no
// logits, run as graphs; prefill chunks (longer, rarer at one shape) run eagerly.
constexpr size_t kGraphChunkTokens = 64;
constexpr int kGraphMaxChunks = 64;

int32_t RoundUp(int32_t x, int32_t m) { return (x + m - 1) / m * m; }

// The context a graph is captured for: rounded up to kContextBucket, but never across 256K
// tokens (16384 blocks), below which SelectBlocksCuda keeps the keys in shared memory.
int32_t ContextBucket(int32_t keys) {
  constexpr int32_t kSmemSelectKeys = 262144;
  const int32_t b = RoundUp(std::max(keys, 1), kContextBucket);
  return keys <= kSmemSelectKeys ? std::min(b, kSmemSelectKeys) : b;
}

}  // namespace

absl::Status CudaModel::Prepare(std::span<const ForwardChunk> chunks, Plan& plan) {
  const ModelConfig& c = config();
  RESA_ASSIGN_OR_RETURN(plan.rows, CheckChunks(chunks, c.vocab_size, plan.starts));
  // Reserve every page first so a full cache fails before any state changes.
  RESA_RETURN_IF_ERROR(ReserveChunks(chunks, plan.starts, *cache_, plan.reserved_before));
  // Classify (empty chunks take no part).
  std::vector<int> dense, chunk;
  std::vector<std::pair<std::pair<float, int32_t>, int>> sparse;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const ForwardChunk& ch = chunks[i];
    if (ch.tokens.empty()) continue;
    if (ch.tokens.size() > 1) {
      chunk.push_back(int(i));
      continue;
    }
    const int32_t num_keys = plan.starts[i] + 1;
    const int32_t m = (num_keys + kPageTokens - 1) / kPageTokens;
    if (ch.sparse != nullptr) {
      const int32_t n =
          std::min(m, NumSelectedBlocksCuda(m, ch.sparse->ratio, ch.sparse->min_blocks));
      stats_.blocks_total += int64_t(m) * c.num_kv_heads * c.num_layers;
      stats_.blocks_read += int64_t(n) * c.num_kv_heads * c.num_layers;
      if (n < m) {
        sparse.push_back({{ch.sparse->ratio, ch.sparse->min_blocks}, int(i)});
        continue;
      }
    }
    dense.push_back(int(i));
  }
  std::stable_sort(sparse.begin(), sparse.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  plan.nd = int(dense.size());
  plan.ns = int(sparse.size());
  plan.nc = int(chunk.size());
  // Sparse rows first: they write their K/V inside SelectBlocksCuda, WriteKvCuda takes the rest.
  for (const auto& s : sparse) plan.order.push_back(s.second);
  plan.order.insert(plan.order.end(), dense.begin(), dense.end());
  plan.order.insert(plan.order.end(), chunk.begin(), chunk.end());
  const int nchunks = int(plan.order.size());
  plan.sharded = sp_parallel();
  // Forwards of short chunks alone (rectification passes: ReSA's f = 32 tokens of each due
  // sequence, every f steps, no logits) plan their chunk attention for the longest chunk's
  // context bucket (ContextBucket), with or without graphs and whatever logits they ask for, so
  // that the same tokens give the same bits eagerly, from a graph captured at another position,
  // or with logits.
  bool short_chunks = plan.nc > 0 && plan.nd == 0 && plan.ns == 0 && plan.nc <= kGraphMaxChunks;
  bool no_logits = true;
  for (int i : chunk) {
    short_chunks = short_chunks && chunks[size_t(i)].tokens.size() <= kGraphChunkTokens;
    no_logits = no_logits && chunks[size_t(i)].logits == LogitsMode::kNone;
  }
  const bool chunk_graph = short_chunks && no_logits;
  // CUDA graphs: decode steps of up to kGemvMaxRows rows, and short chunks without logits
  // (rectification passes: about 11 launches a layer, most of them short at 32 rows, so that
  // eagerly the host's launches pace them).
  plan.graph = options_.graphs && !profiling_ && !trace_ && plan.rows > 0 && !tp_parallel() &&
               !sp_parallel() && ((plan.nc == 0 && plan.rows <= kGemvMaxRows) || chunk_graph);

  // Shapes.
  size_t max_table = 1;
  for (int i : plan.order) {
    const ForwardChunk& ch = chunks[i];
    const int32_t n = int32_t(ch.tokens.size());
    const int32_t end = plan.starts[i] + n;
    max_table = std::max(max_table, size_t((end + kPageTokens - 1) / kPageTokens));
    max_table = std::max(max_table, ch.seq->page_table.size());
    plan.max_write_tokens = std::max(plan.max_write_tokens, n);
  }
  for (int p = plan.ns; p < plan.ns + plan.nd; ++p) {
    plan.max_keys_dense = std::max(plan.max_keys_dense, plan.starts[plan.order[p]] + 1);
  }
  for (int p = plan.nd + plan.ns; p < nchunks; ++p) {
    const int i = plan.order[p];
    const int32_t n = int32_t(chunks[i].tokens.size());
    plan.max_keys_chunk = std::max(plan.max_keys_chunk, plan.starts[i] + n);
    plan.max_chunk_rows = std::max(plan.max_chunk_rows, n);
    plan.chunk_rows += n;
  }
  if (plan.graph) plan.max_keys_dense = ContextBucket(plan.max_keys_dense);
  if (short_chunks) plan.max_keys_chunk = ContextBucket(plan.max_keys_chunk);
  int32_t max_keys_all = std::max(plan.max_keys_dense, plan.max_keys_chunk);
  for (int p = 0; p < plan.ns;) {
    Plan::Group g{sparse[p].first.first, sparse[p].first.second, p, 0, 0, 0, 0, 0};
    while (p < plan.ns && sparse[p].first == std::make_pair(g.ratio, g.min_blocks)) {
      g.max_keys = std::max(g.max_keys, plan.starts[plan.order[p]] + 1);
      ++g.count;
      ++p;
    }
    if (plan.graph) g.max_keys = ContextBucket(g.max_keys);
    g.bstride =
        NumSelectedBlocksCuda((g.max_keys + kPageTokens - 1) / kPageTokens, g.ratio, g.min_blocks);
    g.blocks_at = plan.blocks_size;
    plan.blocks_size += size_t(g.count) * c.num_kv_heads * g.bstride;
    g.num_blocks_at = plan.blocks_size;
    plan.blocks_size += size_t(g.count);
    max_keys_all = std::max(max_keys_all, g.max_keys);
    plan.groups.push_back(g);
  }
  plan.stride = int32_t(max_table);
  if (plan.graph) plan.stride = std::max(plan.stride, max_keys_all / kPageTokens);
  if (plan.sharded) {
    // Sparse rows' owned lists are padded with local block ids past the row's blocks (masked,
    // their table entries name page 0): the table rows must reach them.
    const SequenceShard& shard = cache_->shard();
    for (const Plan::Group& g : plan.groups) {
      const int32_t m = (g.max_keys + kPageTokens - 1) / kPageTokens;
      plan.stride = std::max(plan.stride, shard.NumLocalBlocks(m) + g.bstride);
    }
  }

  // Metadata.
  auto block = [&](size_t n) { return plan.Block(n); };
  plan.o_tokens = block(size_t(plan.rows));
  plan.o_pos = block(size_t(plan.rows));
  plan.o_wk_off = block(size_t(nchunks) + 1);
  plan.o_wk_first = block(size_t(nchunks));
  plan.o_wk_keys = block(size_t(nchunks));
  plan.o_att_keys = block(size_t(nchunks));
  plan.o_ch_off = block(size_t(plan.nc) + 1);
  plan.o_ch_first = block(size_t(plan.nc));
  std::vector<int32_t> logit_rows;
  int64_t r = 0;
  std::vector<int64_t> first_row(chunks.size(), 0);
  for (int p = 0; p < nchunks; ++p) {
    const int i = plan.order[p];
    const ForwardChunk& ch = chunks[i];
    const int32_t n = int32_t(ch.tokens.size()), start = plan.starts[i];
    first_row[i] = r;
    plan.meta[plan.o_wk_off + p] = int32_t(r);
    plan.meta[plan.o_wk_first + p] = start;
    plan.meta[plan.o_wk_keys + p] = std::max(ch.seq->length, start + n);
    plan.meta[plan.o_att_keys + p] =
        plan.sharded ? LocalKeys(cache_->shard(), start + 1) : start + 1;
    for (int32_t t = 0; t < n; ++t, ++r) {
      plan.meta[plan.o_tokens + r] = ch.tokens[t];
      plan.meta[plan.o_pos + r] = start + t;
    }
    if (p >= plan.nd + plan.ns) {
      const int q = p - plan.nd - plan.ns;
      plan.meta[plan.o_ch_off + q] = int32_t(r - n) - int32_t(plan.rows - plan.chunk_rows);
      plan.meta[plan.o_ch_off + q + 1] = int32_t(r) - int32_t(plan.rows - plan.chunk_rows);
      plan.meta[plan.o_ch_first + q] = start + 1;
    }
  }
  plan.meta[plan.o_wk_off + nchunks] = int32_t(r);
  {
    std::vector<int64_t> caller_first(chunks.size(), 0);
    int64_t at = 0;
    for (size_t i = 0; i < chunks.size(); ++i) {
      caller_first[i] = at;
      at += int64_t(chunks[i].tokens.size());
    }
    for (int i : plan.order) plan.caller_row.push_back(caller_first[i]);
  }
  // Logits rows in the caller's chunk order.
  for (size_t i = 0; i < chunks.size(); ++i) {
    const ForwardChunk& ch = chunks[i];
    const int64_t n = int64_t(ch.tokens.size());
    if (ch.logits == LogitsMode::kAll) {
      for (int64_t t = 0; t < n; ++t) logit_rows.push_back(int32_t(first_row[i] + t));
    } else if (ch.logits == LogitsMode::kLast && n > 0) {
      logit_rows.push_back(int32_t(first_row[i] + n - 1));
    }
  }
  plan.nl = int(logit_rows.size());
  plan.greedy = greedy_hint_ && plan.nl > 0;
  plan.greedy_key = plan.greedy && plan.nl == 1 && !tp_parallel() && options_.gemv_max_rows >= 1 &&
                    config().hidden_size % 8 == 0;
  if (plan.greedy_key) plan.o_argmax = block(2);  // zeroed: below every element's key
  plan.o_logit = block(logit_rows.size());
  std::copy(logit_rows.begin(), logit_rows.end(), plan.meta.begin() + int64_t(plan.o_logit));
  // Chunks that all want only their last row's logits: the last layer attends, projects and
  // runs the MLP for the decode rows and those last rows only (Plan::reduce_last).
  plan.reduce_last = !sp_parallel() && plan.nc > 0;
  for (int p = plan.nd + plan.ns; p < nchunks && plan.reduce_last; ++p) {
    plan.reduce_last = chunks[plan.order[p]].logits == LogitsMode::kLast;
  }
  if (plan.reduce_last) {
    const int nrows = plan.ns + plan.nd;  // one row each, rows [0, nrows)
    plan.keep = nrows + plan.nc;
    plan.o_keep = block(size_t(plan.keep));
    plan.o_last_keys = block(size_t(plan.nd + plan.nc));
    plan.o_logit_last = block(size_t(plan.nl));
    std::vector<int32_t> compact(size_t(plan.rows), -1);  // row -> kept row
    for (int p = 0; p < nchunks; ++p) {
      const int i = plan.order[p];
      const int32_t n = int32_t(chunks[i].tokens.size()), start = plan.starts[i];
      const int32_t row = int32_t(first_row[i]) + n - 1;  // decode rows: n == 1
      plan.meta[plan.o_keep + p] = row;
      compact[size_t(row)] = p;
      if (p >= plan.ns) {
        plan.meta[plan.o_last_keys + (p - plan.ns)] = start + n;
        plan.max_keys_last = std::max(plan.max_keys_last, start + n);
      }
    }
    for (int j = 0; j < plan.nl; ++j) {
      plan.meta[plan.o_logit_last + j] = compact[size_t(logit_rows[size_t(j)])];
    }
  }
  plan.logits_all_rows = !plan.reduce_last && int64_t(plan.nl) == plan.rows;
  for (int j = 0; j < plan.nl && plan.logits_all_rows; ++j) {
    plan.logits_all_rows = logit_rows[size_t(j)] == j;
  }
  if (plan.sharded) PrepareSharded(chunks, plan);

  if (plan.graph) {
    plan.key = {plan.nd,
                plan.ns,
                plan.nl,
                plan.stride,
                plan.max_keys_dense,
                ProgrammaticLaunch(),
                SwiGluEpilogue(),
                FusedNorms(),
                SelectionHints(),
                L2FetchGranularity(),
                plan.greedy,
                plan.logits_all_rows,
                plan.nc,
                plan.rows,
                plan.max_chunk_rows,
                plan.max_keys_chunk,
                plan.nc > 0 && WgmmaChunkDefault(),
                DecodeSparseClusters()};
    for (const Plan::Group& g : plan.groups) {
      uint32_t bits;
      std::memcpy(&bits, &g.ratio, 4);
      plan.key.insert(plan.key.end(), {int64_t(bits), g.min_blocks, g.count, g.max_keys});
    }
  }
  return absl::OkStatus();
}

CudaModel::Launches CudaModel::BuildLaunches(const Plan& plan, int layer) const {
  const ModelConfig& c = config();
  const TpShard& ts = weights_->shard();
  const int lh = ts.num_heads, lq = lh * c.head_dim, lkv = ts.num_kv_heads * c.head_dim;
  const float scale = 1.0f / std::sqrt(float(c.head_dim));
  // Attention outputs: attn_ on one SP rank; the partial states (O, lse) in part_ under SP.
  float* out = plan.sharded ? part_ : attn_;
  float* lse = plan.sharded && part_ != nullptr ? part_ + size_t(plan.rows) * lq : nullptr;
  auto out_at = [&](int64_t row) { return out == nullptr ? nullptr : out + size_t(row) * lq; };
  auto lse_at = [&](int64_t row) { return lse == nullptr ? nullptr : lse + size_t(row) * lh; };
  // Selection queries: the group's whole set when KV heads are replicated over TP ranks.
  const bool group_q = ts.kv_replicas > 1;
  const __nv_bfloat16* sel_q = group_q ? gq_ : q_;
  const int sel_heads = group_q ? c.group_size() : lh;
  const int32_t* meta = meta_dev_.as<int32_t>();
  static int32_t sizing_dummy[4];  // non-null stand-in while sizing, before blocks_mem_ exists
  int32_t* blocks = blocks_mem_.as<int32_t>() != nullptr ? blocks_mem_.as<int32_t>() : sizing_dummy;
  // Selection hints of this layer's rows (and a stand-in while sizing, as above). Not under SP:
  // the sharded step scores with ScoreBlocksCuda and selects on the host.
  static uint32_t hint_dummy[4];
  uint32_t* hints = nullptr;
  if (SelectionHints() && !plan.sharded) {
    hints = hints_mem_.as<uint32_t>() != nullptr && plan.rows <= hint_rows_
                ? hints_mem_.as<uint32_t>() + size_t(layer) * hint_rows_ * ts.num_kv_heads
                : hint_dummy;
  }
  const PagedKvCuda kv = cache_->layer(layer);
  Launches L;
  L.dense.kv = kv;
  L.dense.q = q_ == nullptr ? nullptr : q_ + size_t(plan.ns) * lq;
  L.dense.out = out_at(plan.ns);
  L.dense.lse_ln = lse_at(plan.ns);
  L.dense.batch = plan.nd;
  L.dense.num_heads = lh;
  L.dense.scale = scale;
  L.dense.num_keys = meta + plan.o_att_keys + plan.ns;
  L.dense.page_tables = Tables(plan, size_t(plan.ns));
  L.dense.page_table_stride = plan.stride;
  L.dense.max_num_keys = plan.max_keys_dense;
  if (plan.reduce_last) {
    // Dense decode rows, then the chunks' last rows, queries gathered into attn_bf_ (Enqueue).
    L.dense_last = L.dense;
    L.dense_last.q = attn_bf_ == nullptr ? nullptr : attn_bf_ + size_t(plan.ns) * lq;
    L.dense_last.batch = plan.nd + plan.nc;
    L.dense_last.num_keys = meta + plan.o_last_keys;
    L.dense_last.max_num_keys = plan.max_keys_last;
    L.dense_last.q_from_previous_kernel = true;  // q gathered just before
  }
  for (const Plan::Group& g : plan.groups) {
    SelectBlocksParams s;
    s.kv = kv;
    s.q = sel_q == nullptr ? nullptr : sel_q + size_t(g.first) * sel_heads * c.head_dim;
    // The rows' own K/V (appends): written and folded into the summaries by the selection
    // (under SP by WriteKvCuda: only the owner of the block writes).
    if (!plan.sharded) {
      s.k_new = k_ == nullptr ? nullptr : k_ + size_t(g.first) * lkv;
      s.v_new = v_ == nullptr ? nullptr : v_ + size_t(g.first) * lkv;
    }
    s.batch = g.count;
    s.num_heads = sel_heads;
    s.num_keys = meta + plan.o_att_keys + g.first;
    s.page_tables = Tables(plan, size_t(g.first));
    s.page_table_stride = plan.stride;
    s.max_num_keys = g.max_keys;
    s.ratio = g.ratio;
    s.min_blocks = g.min_blocks;
    s.blocks = blocks + g.blocks_at;
    s.num_blocks = blocks + g.num_blocks_at;
    s.blocks_stride = g.bstride;
    s.hints =
        hints == nullptr || hints == hint_dummy ? hints : hints + size_t(g.first) * ts.num_kv_heads;
    DecodeAttentionParams d = L.dense;
    d.q = q_ == nullptr ? nullptr : q_ + size_t(g.first) * lq;
    d.out = out_at(g.first);
    d.lse_ln = lse_at(g.first);
    d.batch = g.count;
    d.num_keys = s.num_keys;
    d.page_tables = s.page_tables;
    d.max_num_keys = g.max_keys;
    d.blocks = s.blocks;
    d.num_blocks = s.num_blocks;
    d.blocks_stride = g.bstride;
    d.max_num_blocks = g.bstride;
    // The sparse decode is scheduled while the selection's rows rank, one CTA a row, when its
    // CTAs fit beside them.
    s.early_dependents = DecodeAttentionFitsBeside(d, g.count * kv.num_kv_heads);
    L.select.push_back(s);
    L.sparse.push_back(d);
  }
  const size_t first_chunk = size_t(plan.nd + plan.ns);
  const int64_t chunk_row0 = plan.rows - plan.chunk_rows;
  L.chunk.kv = kv;
  L.chunk.q = q_ == nullptr ? nullptr : q_ + size_t(chunk_row0) * lq;
  L.chunk.out = out_at(chunk_row0);
  L.chunk.lse_ln = lse_at(chunk_row0);
  if (plan.sharded) L.chunk.row_num_keys = meta + plan.o_row_keys;
  L.chunk.num_heads = lh;
  L.chunk.scale = scale;
  L.chunk.num_chunks = plan.nc;
  L.chunk.row_offsets = meta + plan.o_ch_off;
  L.chunk.first_num_keys = meta + plan.o_ch_first;
  L.chunk.page_tables = Tables(plan, first_chunk);
  L.chunk.page_table_stride = plan.stride;
  L.chunk.total_rows = plan.chunk_rows;
  L.chunk.max_rows = plan.max_chunk_rows;
  L.chunk.max_num_keys = plan.max_keys_chunk;
  void* ws = workspace_.as<void>();
  const size_t ws_bytes = workspace_.bytes();
  L.dense.workspace = L.chunk.workspace = L.dense_last.workspace = ws;
  L.dense.workspace_bytes = L.chunk.workspace_bytes = L.dense_last.workspace_bytes = ws_bytes;
  for (auto& p : L.select) {
    p.workspace = ws;
    p.workspace_bytes = ws_bytes;
  }
  for (auto& p : L.sparse) {
    p.workspace = ws;
    p.workspace_bytes = ws_bytes;
  }
  return L;
}

}  // namespace resa::cuda
