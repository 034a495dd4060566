// CudaModel's per-forward plan and launch parameters, built by cuda_model_plan.cc and shared by
// cuda_model.cc (one rank) and cuda_model_grid.cc (the distributed steps). Internal to the CUDA
// backend.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/selection_cuda.h"
#include "runtime/engine/cuda/cuda_model.h"

namespace resa::cuda {

// Profiling groups of kernels (CudaModel::Mark); names in kProfileGroups (cuda_model.cc).
enum ProfileGroup { kStart, kMatmul, kElementwise, kKvWrite, kSelect, kAttention, kGroups };

// Everything one forward needs, decided on the host before any launch.
struct CudaModel::Plan {
  // Chunks in launch order: dense decode rows, sparse decode rows (by group), multi-token chunks.
  std::vector<int> order;       // launch position -> index in the caller's span
  std::vector<int32_t> starts;  // by caller index
  int64_t rows = 0;
  int nd = 0, ns = 0, nc = 0, nl = 0;
  struct Group {
    float ratio;
    int32_t min_blocks;
    int first, count;  // launch positions [first, first + count)
    int32_t max_keys;
    int bstride;
    size_t blocks_at, num_blocks_at;  // int32 offsets in blocks_mem_
  };
  std::vector<Group> groups;
  int32_t stride = 1, max_keys_dense = 0, max_keys_chunk = 0, max_chunk_rows = 0,
          chunk_rows = 0, max_write_tokens = 0;
  size_t blocks_size = 0;
  // int32 metadata, uploaded as one block; offsets into it.
  std::vector<int32_t> meta;
  size_t o_tokens = 0, o_pos = 0, o_wk_off = 0, o_wk_first = 0, o_wk_keys = 0, o_att_keys = 0,
         o_ch_off = 0, o_ch_first = 0, o_logit = 0;
  size_t workspace_bytes = 0;
  // The last layer of a forward whose chunks all ask for their last row's logits only
  // (LogitsMode::kLast; not under SP) runs on `keep` rows: the decode rows, then each chunk's
  // last row as a dense decode row (o_keep: their rows; o_last_keys: the dense launch's key
  // counts; o_logit_last: the logit rows among them). The other rows' K/V are written first.
  bool reduce_last = false;
  int keep = 0;
  int32_t max_keys_last = 0;
  size_t o_keep = 0, o_last_keys = 0, o_logit_last = 0;
  bool graph = false;
  bool greedy = false;  // the forward ends with its logits rows' greedy ids (CudaModel::Sample)
  // Greedy with one logits row and the lm_head on the one-row GEMV (not TP): the GEMV takes the
  // arg-max itself (GemvArgMaxBf16Cuda) into the zeroed uint64 at meta offset o_argmax, and the
  // forward downloads that key instead of running an arg-max kernel.
  bool greedy_key = false;
  size_t o_argmax = 0;
  // The logits rows are all rows in order (decode steps): the lm_head reads the final norm's
  // output as it is, no gather.
  bool logits_all_rows = false;
  std::vector<int64_t> key;
  std::vector<size_t> reserved_before;  // page-table sizes before this forward's reservations
  std::vector<int64_t> caller_row;       // by launch position: the row's index in caller order

  // SP (PrepareSharded): attention limits are local-view key counts; K/V writes are the owned
  // runs of positions (rows gathered from o_own_rows, entries sharing their chunk's table row);
  // chunk rows see row_num_keys (o_row_keys); sparse rows select across ranks.
  bool sharded = false;
  int nw = 0, n_own = 0;
  size_t o_own_rows = 0, o_sw_off = 0, o_sw_first = 0, o_sw_keys = 0, o_sw_table = 0,
         o_row_keys = 0;
  struct SparseRow {
    int32_t num_blocks, n;          // M and the global n of the row
    std::vector<int32_t> owned;     // this rank's blocks of [0, M), ascending (logical ids)
  };
  std::vector<SparseRow> sparse_rows;       // by launch position < ns
  std::vector<size_t> scores_at;            // by group: float offset in scores_
  std::vector<int32_t> scores_stride;       // by group
  size_t o_sel_keys = 0;                    // [ns] global key counts of the sparse rows
  size_t scores_size = 0;
  size_t selected_size = 0;                 // int32 entries of the global selections

  // A block of n int32 metadata entries (16-byte aligned); returns its offset.
  size_t Block(size_t n) {
    const size_t at = meta.size();
    meta.resize(at + (n + 3) / 4 * 4, 0);
    return at;
  }
};

// The launch parameters of one layer's attention, shared by workspace sizing and enqueueing.
struct CudaModel::Launches {
  DecodeAttentionParams dense;
  DecodeAttentionParams dense_last;  // Plan::reduce_last: the last layer's dense rows
  std::vector<SelectBlocksParams> select;
  std::vector<DecodeAttentionParams> sparse;
  ChunkAttentionParams chunk;
  size_t WorkspaceBytes(const Plan& plan) const {
    size_t b = 0;
    if (plan.nd > 0) b = std::max(b, DecodeAttentionWorkspaceBytes(dense));
    if (plan.reduce_last) b = std::max(b, DecodeAttentionWorkspaceBytes(dense_last));
    for (const auto& p : select) b = std::max(b, SelectBlocksWorkspaceBytes(p));
    for (const auto& p : sparse) b = std::max(b, DecodeAttentionWorkspaceBytes(p));
    if (plan.nc > 0) b = std::max(b, ChunkAttentionWorkspaceBytes(chunk));
    return b;
  }
};

}  // namespace resa::cuda
