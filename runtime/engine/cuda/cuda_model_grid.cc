// CudaModel's distributed steps (cuda_model.h, "Distributed"): collectives on device buffers,
// the SP local view of a forward, the selection exchange, the partial-state merge and the
// vocab-parallel logits.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/selection_cuda.h"
#include "runtime/core/status.h"
#include "runtime/engine/cuda/cuda_model_internal.h"
#include "runtime/engine/cuda/model_ops_cuda.h"

namespace resa::cuda {

absl::Status CudaModel::AllReduceSum(Communicator& comm, float* data, size_t count) {
  if (comm.buffer_location() == BufferLocation::kDevice) {
    return comm.AllReduce(DataType::kFloat32, ReduceOp::kSum, data, count, stream_);
  }
  const size_t bytes = count * sizeof(float);
  RESA_RETURN_IF_ERROR(CudaStatus(
      cudaMemcpyAsync(stage_host_, data, bytes, cudaMemcpyDeviceToHost, stream_), "staging"));
  RESA_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream_), "staging an all-reduce"));
  RESA_RETURN_IF_ERROR(
      comm.AllReduce(DataType::kFloat32, ReduceOp::kSum, stage_host_, count, nullptr));
  return CudaStatus(cudaMemcpyAsync(data, stage_host_, bytes, cudaMemcpyHostToDevice, stream_),
                    "unstaging an all-reduce");
}

absl::Status CudaModel::AllGather(Communicator& comm, DataType type, const void* send, void* recv,
                                  size_t count) {
  if (comm.buffer_location() == BufferLocation::kDevice) {
    return comm.AllGather(type, send, recv, count, stream_);
  }
  const size_t bytes = count * DataTypeSize(type);
  char* recv_host = stage_host_ + bytes;
  RESA_RETURN_IF_ERROR(CudaStatus(
      cudaMemcpyAsync(stage_host_, send, bytes, cudaMemcpyDeviceToHost, stream_), "staging"));
  RESA_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream_), "staging an all-gather"));
  RESA_RETURN_IF_ERROR(comm.AllGather(type, stage_host_, recv_host, count, nullptr));
  return CudaStatus(cudaMemcpyAsync(recv, recv_host, bytes * size_t(comm.size()),
                                    cudaMemcpyHostToDevice, stream_),
                    "unstaging an all-gather");
}

absl::Status CudaModel::SyncCommunicators() {
  for (Communicator* comm : {tp_, sp_}) {
    if (comm != nullptr && comm->size() > 1 &&
        comm->buffer_location() == BufferLocation::kDevice) {
      RESA_RETURN_IF_ERROR(comm->Synchronize(stream_));
    }
  }
  return absl::OkStatus();
}

void CudaModel::PrepareSharded(std::span<const ForwardChunk> chunks, Plan& plan) {
  const SequenceShard& shard = cache_->shard();
  const int hkv = weights_->shard().num_kv_heads;
  // Owned K/V runs: consecutive positions of one owned block form one WriteKvCuda entry; their
  // rows are gathered contiguously first.
  struct Entry {
    int32_t begin, first, keys, table;
  };
  std::vector<Entry> entries;
  std::vector<int32_t> own_rows, row_keys;
  int64_t r = 0;
  for (size_t p = 0; p < plan.order.size(); ++p) {
    const ForwardChunk& ch = chunks[size_t(plan.order[p])];
    const int32_t n = int32_t(ch.tokens.size()), start = plan.starts[size_t(plan.order[p])];
    const int32_t keys = LocalKeys(shard, std::max(ch.seq->length, start + n));
    int32_t prev_block = -1;
    for (int32_t t = 0; t < n; ++t, ++r) {
      const int32_t pos = start + t, blk = pos / kPageTokens;
      if (n > 1) row_keys.push_back(LocalKeys(shard, pos + 1));
      if (!shard.Owns(blk)) continue;
      if (blk != prev_block) {
        entries.push_back(Entry{int32_t(own_rows.size()),
                                shard.LocalIndex(blk) * kPageTokens + pos % kPageTokens, keys,
                                int32_t(p)});
        prev_block = blk;
      }
      own_rows.push_back(int32_t(r));
    }
  }
  plan.nw = int(entries.size());
  plan.n_own = int(own_rows.size());
  plan.o_own_rows = plan.Block(own_rows.size());
  std::copy(own_rows.begin(), own_rows.end(), plan.meta.begin() + int64_t(plan.o_own_rows));
  plan.o_sw_off = plan.Block(entries.size() + 1);
  plan.o_sw_first = plan.Block(entries.size());
  plan.o_sw_keys = plan.Block(entries.size());
  plan.o_sw_table = plan.Block(entries.size());
  for (size_t e = 0; e < entries.size(); ++e) {
    plan.meta[plan.o_sw_off + e] = entries[e].begin;
    plan.meta[plan.o_sw_first + e] = entries[e].first;
    plan.meta[plan.o_sw_keys + e] = entries[e].keys;
    plan.meta[plan.o_sw_table + e] = entries[e].table;
  }
  plan.meta[plan.o_sw_off + entries.size()] = int32_t(own_rows.size());
  plan.o_row_keys = plan.Block(row_keys.size());
  std::copy(row_keys.begin(), row_keys.end(), plan.meta.begin() + int64_t(plan.o_row_keys));

  // Sparse rows: global key counts, the blocks this rank scores, where their scores go.
  plan.o_sel_keys = plan.Block(size_t(plan.ns));
  plan.sparse_rows.resize(size_t(plan.ns));
  for (const Plan::Group& g : plan.groups) {
    int32_t stride = 0;
    for (int p = g.first; p < g.first + g.count; ++p) {
      const int32_t num_keys = plan.starts[size_t(plan.order[size_t(p)])] + 1;
      Plan::SparseRow& sr = plan.sparse_rows[size_t(p)];
      sr.num_blocks = (num_keys + kPageTokens - 1) / kPageTokens;
      sr.n = NumSelectedBlocksCuda(sr.num_blocks, g.ratio, g.min_blocks);
      sr.owned = OwnedBlocks(shard, sr.num_blocks);
      stride = std::max(stride, int32_t(sr.owned.size()));
      plan.meta[plan.o_sel_keys + size_t(p)] = num_keys;
      plan.selected_size += size_t(hkv) * size_t(sr.n);
    }
    stride = std::max(4, (stride + 3) / 4 * 4);
    plan.scores_at.push_back(plan.scores_size);
    plan.scores_stride.push_back(stride);
    plan.scores_size += size_t(g.count) * hkv * size_t(stride);
  }
}

absl::Status CudaModel::GatherGroupQueries(const Plan& plan) {
  const ModelConfig& c = config();
  const TpShard& ts = weights_->shard();
  const int lq = ts.num_heads * c.head_dim;
  const size_t rows = size_t(plan.rows);
  RESA_RETURN_IF_ERROR(AllGather(*tp_, DataType::kBFloat16, q_, gath_, rows * lq));
  // KV head kv_head_begin is held by TP ranks [kh * R, (kh + 1) * R), each with `lq` of its
  // group's query columns, in head order.
  const int replicas = ts.kv_replicas, first = ts.kv_head_begin * replicas;
  const size_t row_bytes = size_t(lq) * 2;
  const auto* gathered = static_cast<const __nv_bfloat16*>(gath_);
  for (int j = 0; j < replicas; ++j) {
    RESA_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpy2DAsync(gq_ + size_t(j) * lq, row_bytes * replicas,
                          gathered + size_t(first + j) * rows * lq, row_bytes, row_bytes, rows,
                          cudaMemcpyDeviceToDevice, stream_),
        "assembling group queries"));
  }
  return absl::OkStatus();
}

absl::Status CudaModel::WriteOwnedKv(const Plan& plan, int layer) {
  const ModelConfig& c = config();
  const TpShard& ts = weights_->shard();
  const int lkv = ts.num_kv_heads * c.head_dim;
  const int32_t* meta = meta_dev_.as<int32_t>();
  if (plan.n_own > 0) {
    RESA_RETURN_IF_ERROR(GatherRowsCuda(k_, meta + plan.o_own_rows, plan.n_own, lkv, kw_, stream_));
    RESA_RETURN_IF_ERROR(GatherRowsCuda(v_, meta + plan.o_own_rows, plan.n_own, lkv, vw_, stream_));
    WriteKvParams wk;
    wk.kv = cache_->layer(layer);
    wk.k = kw_;
    wk.v = vw_;
    wk.num_seqs = plan.nw;
    wk.token_offsets = meta + plan.o_sw_off;
    wk.first_pos = meta + plan.o_sw_first;
    wk.num_keys = meta + plan.o_sw_keys;
    wk.page_tables = Tables(plan, 0);
    wk.page_table_stride = plan.stride;
    wk.table_index = meta + plan.o_sw_table;
    wk.max_tokens = kPageTokens;  // an entry stays within one block
    RESA_RETURN_IF_ERROR(WriteKvCuda(wk, stream_));
    RESA_RETURN_IF_ERROR(Mark(kKvWrite));
  }
  return absl::OkStatus();
}

absl::Status CudaModel::ShardedAttention(const Plan& plan, int layer) {
  RESA_RETURN_IF_ERROR(WriteOwnedKv(plan, layer));
  if (plan.ns > 0) RESA_RETURN_IF_ERROR(SelectAcrossRanks(plan, layer));
  const Launches L = BuildLaunches(plan, layer);
  if (plan.nd > 0) RESA_RETURN_IF_ERROR(DecodeAttentionCuda(L.dense, stream_));
  for (const DecodeAttentionParams& d : L.sparse) {
    RESA_RETURN_IF_ERROR(DecodeAttentionCuda(d, stream_));
  }
  if (plan.nc > 0) RESA_RETURN_IF_ERROR(ChunkAttentionCuda(L.chunk, stream_));
  RESA_RETURN_IF_ERROR(Mark(kAttention));
  return MergeAcrossRanks(plan);
}

absl::Status CudaModel::SelectAcrossRanks(const Plan& plan, int layer) {
  const ModelConfig& c = config();
  const TpShard& ts = weights_->shard();
  const int hkv = ts.num_kv_heads, d = c.head_dim;
  const bool group_q = ts.kv_replicas > 1;
  const __nv_bfloat16* sel_q = group_q ? gq_ : q_;
  const int sel_heads = group_q ? c.group_size() : ts.num_heads;
  const int32_t* meta = meta_dev_.as<int32_t>();
  const SequenceShard& shard = cache_->shard();
  // 1. This rank's scores of its blocks, downloaded.
  for (size_t gi = 0; gi < plan.groups.size(); ++gi) {
    const Plan::Group& g = plan.groups[gi];
    ScoreBlocksParams sp;
    sp.kv = cache_->layer(layer);
    sp.q = sel_q + size_t(g.first) * sel_heads * d;
    sp.batch = g.count;
    sp.num_heads = sel_heads;
    sp.num_keys = meta + plan.o_sel_keys + g.first;
    sp.page_tables = Tables(plan, size_t(g.first));
    sp.page_table_stride = plan.stride;
    sp.max_num_keys = g.max_keys;
    sp.sp_rank = shard.rank;
    sp.sp_size = shard.size;
    sp.scores = scores_ + plan.scores_at[gi];
    sp.scores_stride = plan.scores_stride[gi];
    RESA_RETURN_IF_ERROR(ScoreBlocksCuda(sp, stream_));
  }
  scores_host_.resize(plan.scores_size);
  RESA_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(scores_host_.data(), scores_, plan.scores_size * 4,
                                                  cudaMemcpyDeviceToHost, stream_),
                                  "downloading block scores"));
  // NCCL collectives may be in flight ahead of the scores: a bounded wait (a dead peer aborts
  // them) before the unbounded stream synchronisation.
  RESA_RETURN_IF_ERROR(SyncCommunicators());
  RESA_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream_), "scoring blocks"));
  // 2. One exchange for every (row, KV head) of the layer: the global top-n on every rank.
  selected_.resize(plan.selected_size);
  std::vector<SelectionRow> rows;
  rows.reserve(size_t(plan.ns) * hkv);
  std::vector<size_t> sel_at(size_t(plan.ns));
  size_t at = 0;
  for (size_t gi = 0; gi < plan.groups.size(); ++gi) {
    const Plan::Group& g = plan.groups[gi];
    for (int b = 0; b < g.count; ++b) {
      const Plan::SparseRow& sr = plan.sparse_rows[size_t(g.first + b)];
      sel_at[size_t(g.first + b)] = at;
      for (int h = 0; h < hkv; ++h) {
        const float* sc = scores_host_.data() + plan.scores_at[gi] +
                          (size_t(b) * hkv + h) * size_t(plan.scores_stride[gi]);
        rows.push_back(SelectionRow{sc, sr.owned.data(), int32_t(sr.owned.size()), sr.n,
                                    selected_.data() + at + size_t(h) * sr.n});
      }
      at += size_t(hkv) * sr.n;
    }
  }
  RESA_RETURN_IF_ERROR(SelectBlocksAcrossRanks(*sp_host_, rows, &selection_scratch_));
  RESA_RETURN_IF_ERROR(Mark(kSelect));
  // 3. The owned part of each selection as local block ids, padded per row to the largest
  // count over its KV heads with ids past the row's local blocks (masked by the kernel).
  lists_host_.assign(plan.blocks_size, 0);
  for (const Plan::Group& g : plan.groups) {
    for (int b = 0; b < g.count; ++b) {
      const int p = g.first + b;
      const Plan::SparseRow& sr = plan.sparse_rows[size_t(p)];
      const int32_t local_blocks = int32_t(sr.owned.size());
      int32_t count = 0;
      for (int h = 0; h < hkv; ++h) {
        const int32_t* sel = selected_.data() + sel_at[size_t(p)] + size_t(h) * sr.n;
        int32_t mine = 0;
        for (int32_t i = 0; i < sr.n; ++i) mine += shard.Owns(sel[i]) ? 1 : 0;
        count = std::max(count, mine);
        if (trace_) {
          trace_(layer, ts.kv_head_begin + h, plan.caller_row[size_t(p)],
                 std::span<const int32_t>(sel, size_t(sr.n)));
        }
      }
      for (int h = 0; h < hkv; ++h) {
        const int32_t* sel = selected_.data() + sel_at[size_t(p)] + size_t(h) * sr.n;
        int32_t* out = lists_host_.data() + g.blocks_at + (size_t(b) * hkv + h) * g.bstride;
        int32_t k = 0;
        for (int32_t i = 0; i < sr.n; ++i) {
          if (shard.Owns(sel[i])) out[k++] = shard.LocalIndex(sel[i]);
        }
        for (int32_t pad = local_blocks; k < count; ++k) out[k] = pad++;
      }
      lists_host_[g.num_blocks_at + size_t(b)] = count;
    }
  }
  return CudaStatus(cudaMemcpyAsync(blocks_mem_.as<int32_t>(), lists_host_.data(),
                                    plan.blocks_size * 4, cudaMemcpyHostToDevice, stream_),
                    "uploading owned selections");
}

absl::Status CudaModel::MergeAcrossRanks(const Plan& plan) {
  const ModelConfig& c = config();
  const TpShard& ts = weights_->shard();
  const size_t rows = size_t(plan.rows), lh = size_t(ts.num_heads), lq = lh * c.head_dim;
  const size_t count = rows * (lq + lh);
  RESA_RETURN_IF_ERROR(AllGather(*sp_, DataType::kFloat32, part_, gath_, count));
  // Every rank folds the same gathered states in rank order: identical bits everywhere.
  const float* g = static_cast<const float*>(gath_);
  RESA_RETURN_IF_ERROR(CudaStatus(
      cudaMemcpyAsync(attn_, g, rows * lq * 4, cudaMemcpyDeviceToDevice, stream_), "merging"));
  RESA_RETURN_IF_ERROR(CudaStatus(
      cudaMemcpyAsync(merge_lse_, g + rows * lq, rows * lh * 4, cudaMemcpyDeviceToDevice, stream_),
      "merging"));
  for (int s = 1; s < sp_->size(); ++s) {
    const float* base = g + size_t(s) * count;
    RESA_RETURN_IF_ERROR(MergeAttentionStatesCuda(attn_, merge_lse_, base, base + rows * lq,
                                                  int(rows * lh), c.head_dim, stream_));
  }
  return Mark(kAttention);
}

absl::Status CudaModel::GatherLogits(const Plan& plan, const __nv_bfloat16* xl) {
  const ModelConfig& c = config();
  const TpShard& ts = weights_->shard();
  const int nl = plan.nl, chunk = ts.vocab_chunk;
  // Local rows [nl][vocab_size] packed at the front of dlogits_, sent as nl * chunk floats.
  if (ts.vocab_size > 0) {
    RESA_RETURN_IF_ERROR(
        Linear(xl, weights_->lm_head(), nl, ts.vocab_size, c.hidden_size, dlogits_));
  }
  RESA_RETURN_IF_ERROR(Mark(kMatmul));
  RESA_RETURN_IF_ERROR(
      AllGather(*tp_, DataType::kFloat32, dlogits_, gath_, size_t(nl) * chunk));
  const float* g = static_cast<const float*>(gath_);
  for (int t = 0; t < tp_->size(); ++t) {
    const int begin = std::min(c.vocab_size, t * chunk);
    const int n = std::min(c.vocab_size, (t + 1) * chunk) - begin;
    if (n <= 0) continue;
    RESA_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpy2DAsync(dlogits_ + begin, size_t(c.vocab_size) * 4,
                          g + size_t(t) * nl * chunk, size_t(n) * 4, size_t(n) * 4, size_t(nl),
                          cudaMemcpyDeviceToDevice, stream_),
        "placing gathered logits"));
  }
  return absl::OkStatus();
}

}  // namespace resa::cuda
