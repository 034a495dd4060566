// The chunk attention kernels' shared pieces (chunk_attention.cu's kernels and chunk_wgmma.cuh's):
// the launch arguments, the work of one CTA (rows, key tiles, causal limits) and where a row's
// output goes. Included by chunk_attention.cu only.
#pragma once

#include <cuda.h>  // CUtensorMap

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/paged_kv_cuda.h"

namespace resa::cuda::chunk {

struct ChunkArgs {
  // TMA maps of the K and V pools (the warp-specialised kernel with a TMA producer): 3-D,
  // (head_dim, 16 * hkv rows, num_pages), box (64, 16, 1): one 64-dim plane of one (page, KV head),
  // 2 KB, landing in the 128-byte swizzled layout wgmma reads. Kernels take ChunkArgs as a
  // __grid_constant__ parameter so the maps have a generic address.
  CUtensorMap map_k, map_v;
  ChunkAttentionParams p;
  int group;
  int num_splits;
  float scale_log2;
  float* ws_o;    // [num_splits][total_rows][num_heads][head_dim]
  float* ws_lse;  // [num_splits][total_rows][num_heads], natural log
  bool pingpong;  // warp-specialised kernels: consumer warpgroups issue their MMAs in turn
};

// The work of one CTA of either kernel: row tile gridDim.y - 1 - blockIdx.y (latest rows first:
// they see the most keys) of `bm` rows of (chunk, KV head) blockIdx.z, and key tiles [t0, t1)
// of `bn` keys (split blockIdx.x).
struct ChunkCta {
  int chunk, h, i_lo, t0, t1;
  int32_t row_off, rows, r_hi, first, key_end, min_limit;
  const int32_t* row_keys;  // the chunk's row_num_keys, or null (causal)
  const int32_t* table;     // the chunk's page table
  bool empty;               // the tile holds no row of the chunk

  // Keys chunk row r sees (clamped to the tile's rows); non-decreasing in r either way.
  __device__ int32_t limit_of(int r) const {
    return row_keys == nullptr ? first + r : row_keys[min(r, r_hi)];
  }
};

__device__ __forceinline__ ChunkCta LocateChunkCta(const ChunkArgs& a, int bm, int bn) {
  const ChunkAttentionParams& p = a.p;
  const int hkv = p.kv.num_kv_heads, g = a.group;
  ChunkCta w;
  w.chunk = blockIdx.z / hkv;
  w.h = blockIdx.z % hkv;
  w.row_off = p.row_offsets[w.chunk];
  w.rows = p.row_offsets[w.chunk + 1] - w.row_off;
  w.i_lo = (gridDim.y - 1 - blockIdx.y) * bm;
  w.empty = w.i_lo >= w.rows * g;
  w.r_hi = min(w.rows - 1, (w.i_lo + bm - 1) / g);
  w.row_keys = p.row_num_keys != nullptr ? p.row_num_keys + w.row_off : nullptr;
  w.first = w.row_keys == nullptr ? p.first_num_keys[w.chunk] : 0;
  w.key_end = w.empty ? 0 : w.limit_of(w.r_hi);  // no row of the tile sees a key at or past this
  w.min_limit = w.empty ? 0 : w.limit_of(w.i_lo / g);
  const int kv_tiles = (w.key_end + bn - 1) / bn;
  const int per_split = (kv_tiles + a.num_splits - 1) / a.num_splits;
  w.t0 = blockIdx.x * per_split;
  w.t1 = min(kv_tiles, w.t0 + per_split);
  w.table = p.page_tables + size_t(w.chunk) * p.page_table_stride;
  return w;
}

// Where CTA row i of the chunk at row_off, KV head h writes its normalised O (head_dim floats)
// and LSE: out / lse_ln, or with several splits split blockIdx.x's partials (lse null when
// lse_ln is null and there is one split).
struct ChunkDst {
  float* o;
  float* lse;
};
__device__ __forceinline__ ChunkDst ChunkRowDst(const ChunkArgs& a, int32_t row_off, int h, int i) {
  const ChunkAttentionParams& p = a.p;
  size_t row = size_t(row_off + i / a.group) * p.num_heads + h * a.group + i % a.group;
  if (a.num_splits == 1) {
    return {p.out + row * p.kv.head_dim, p.lse_ln != nullptr ? p.lse_ln + row : nullptr};
  }
  row += size_t(blockIdx.x) * p.total_rows * p.num_heads;
  return {a.ws_o + row * p.kv.head_dim, a.ws_lse + row};
}

}  // namespace resa::cuda::chunk
