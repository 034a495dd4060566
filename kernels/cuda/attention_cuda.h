// Attention over the paged bf16 KV cache on the GPU (sm_90): the CUDA twins of
// kernels/cpu/attention.h. bf16 inputs, fp32 accumulation, fp32 outputs.
//
// Conventions shared with the CPU kernels (DESIGN.md §3):
//   q       [rows][num_heads][head_dim] bf16, post-RoPE, unscaled;
//   out     [rows][num_heads][head_dim] fp32, normalised;
//   lse_ln  [rows][num_heads] fp32 (optional): natural log of the softmax denominator in
//           scaled-logit units (logits already multiplied by `scale`);
//   a row that sees no key gets O = 0 and lse_ln = -inf (never NaN).
// Query head j reads KV head j / group, group = num_heads / num_kv_heads (contiguous grouping).
// All pointers are device pointers unless a field says "host". Every launcher validates its
// arguments, enqueues on `stream` without synchronising, and checks the launch.
//
// Workspaces: a launcher that needs scratch takes `workspace` of at least the bytes its
// *WorkspaceBytes function returns for the same params. The first kWorkspaceCounterBytes of every
// workspace hold arrival counters that must be zero before the first launch (cudaMemset once
// after allocating); every launcher leaves them zero again and writes its own scratch only after
// them. So one zeroed workspace, sized by the largest *WorkspaceBytes, serves any number and mix
// of launches (decode, chunk, selection; any shapes) on one stream, CUDA graph replays included.
// Do not share a workspace between launches that may run concurrently.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/paged_kv_cuda.h"

namespace resa::cuda {

// One decode query row per sequence, dense (all keys) or block-sparse (selected blocks).
// Twin of PagedAttention with one AttentionRow per sequence.
struct DecodeAttentionParams {
  PagedKvCuda kv;                    // read only
  const __nv_bfloat16* q = nullptr;  // [batch][num_heads][head_dim]
  float* out = nullptr;              // [batch][num_heads][head_dim]
  float* lse_ln = nullptr;           // [batch][num_heads], may be null
  int batch = 0;
  int num_heads = 0;
  float scale = 0.0f;  // usually 1/sqrt(head_dim)

  const int32_t* num_keys = nullptr;     // [batch]: sequence b sees positions [0, num_keys[b])
  const int32_t* page_tables = nullptr;  // [batch][page_table_stride]: logical block -> page
  int page_table_stride = 0;
  int32_t max_num_keys = 0;  // host: >= every num_keys[b]; sizes the grid and the workspace

  // Block-sparse rows when `blocks` is set: KV head h of sequence b reads logical blocks
  // blocks[(b * num_kv_heads + h) * blocks_stride + i] for i < num_blocks[b] (any order, no
  // duplicates, possibly none; positions >= num_keys[b] are masked). The layout is exactly
  // what SelectBlocksCuda writes.
  const int32_t* blocks = nullptr;
  const int32_t* num_blocks = nullptr;  // [batch]
  int blocks_stride = 0;
  int32_t max_num_blocks = 0;  // host: >= every num_blocks[b]

  void* workspace = nullptr;
  size_t workspace_bytes = 0;

  // The kernel stages the query heads before its programmatic-dependent-launch wait, for q
  // written two or more launches back (launch.h). Set when the kernel launched just before this
  // one writes q (the batch-1 QKV GEMV that also appends K/V): q is then read after the wait.
  // Same results either way.
  bool q_from_previous_kernel = false;
  // Dense rows: every page but each row's last holds K/V written two or more launches back
  // (a decode step, whose only K/V write is the new token's), so each warp loads its first
  // page before the wait, beside the kernel before it. Same results either way.
  bool pages_before_wait = false;
};

size_t DecodeAttentionWorkspaceBytes(const DecodeAttentionParams& p);
absl::Status DecodeAttentionCuda(const DecodeAttentionParams& p, cudaStream_t stream);

// How sparse rows that need more splits than a row's last CTA folds (batch 1-4 at long context)
// merge them: false (the default), by DecodeMergeKernel, as dense rows do; true, in 8-CTA
// thread-block clusters (distributed shared memory, then the last cluster leader folds). The
// launches differ in grid and workspace: set it before sizing workspaces. Same results within
// the tolerance, not bit for bit. RESA_CUDA_SPARSE_CLUSTERS=1 in the environment sets true at
// start (A/B runs).
bool DecodeSparseClusters();
void SetDecodeSparseClusters(bool on);

// Whether DecodeAttentionCuda(p) can be scheduled while `busy_sms` SMs are each held by a CTA of
// the kernel before it (SelectBlocksParams::early_dependents) without losing time: always for
// launches without thread-block clusters (a CTA that finds no room starts as those SMs free up,
// as it would without the overlap); for clustered launches (sparse rows at batch 1-4 and long
// context with DecodeSparseClusters()) only when the grid plus one cluster per busy SM fits the
// device's cluster capacity, since a busy SM can leave no room in its GPC for a cluster, which then
// waits for a whole cluster of the same launch to finish. Host only; reads no device memory.
bool DecodeAttentionFitsBeside(const DecodeAttentionParams& p, int busy_sms);

// Which kernel ChunkAttentionCuda runs (ChunkAttentionParams::kernel): kMmaSync (any device),
// kWgmma (sm_90: 2 or 3 warpgroups that all load and compute) or kWgmmaWs (sm_90: 2 consumer
// warpgroups fed by a producer warpgroup through mbarriers); kAuto picks (docs/kernels.md).
enum class ChunkKernel { kAuto, kMmaSync, kWgmma, kWgmmaWs };

// What kAuto means in this process: a wgmma kernel on sm_90 devices (true, the default) or the
// mma.sync kernel everywhere. RESA_CUDA_CHUNK_KERNEL=mma in the environment sets false at start;
// =wgmma or =ws makes kAuto run that wgmma kernel for every shape (A/B runs).
bool WgmmaChunkDefault();
void SetWgmmaChunkDefault(bool on);

// Dense causal attention of query chunks against the whole cache of their sequence: prefill
// chunks (a whole prompt is one chunk with first_num_keys = 1) and ReSA rectification chunks
// (f tokens at the end). Chunk c owns query rows [row_offsets[c], row_offsets[c + 1]); its row
// r sees keys [0, first_num_keys[c] + r) of its sequence (or [0, row_num_keys[i]) when set).
// Twin of PagedChunkAttention, batched (with row_num_keys: of PagedAttention, one row each).
struct ChunkAttentionParams {
  PagedKvCuda kv;
  const __nv_bfloat16* q = nullptr;  // [total_rows][num_heads][head_dim]
  float* out = nullptr;              // [total_rows][num_heads][head_dim]
  float* lse_ln = nullptr;           // [total_rows][num_heads], may be null
  int num_heads = 0;
  float scale = 0.0f;  // > 0, usually 1/sqrt(head_dim)

  int num_chunks = 0;
  const int32_t* row_offsets = nullptr;     // [num_chunks + 1], row_offsets[0] = 0
  const int32_t* first_num_keys = nullptr;  // [num_chunks], >= 1
  const int32_t* page_tables = nullptr;     // [num_chunks][page_table_stride]
  int page_table_stride = 0;
  int32_t total_rows = 0;    // host: row_offsets[num_chunks]
  int32_t max_rows = 0;      // host: >= rows of every chunk
  int32_t max_num_keys = 0;  // host: >= every row's key count (first_num_keys[c] + rows_c - 1)

  // Optional [total_rows]: row i sees keys [0, row_num_keys[i]) instead of
  // first_num_keys[c] + (i - row_offsets[c]); non-decreasing within each chunk, may be 0 (that row
  // gets O = 0, lse = -inf). first_num_keys may be null when this is set. Sequence parallelism:
  // a rank's packed local view, where the causal limit stands still on rows in other ranks' blocks.
  const int32_t* row_num_keys = nullptr;

  // Splits of the key range per (chunk, row tile, KV head); 0 picks one from the device's
  // multiprocessor count (more splits when there are few row tiles, e.g. rectification).
  int num_splits = 0;

  // The kernel: kAuto takes a warpgroup-MMA (wgmma) kernel on sm_90 devices when
  // WgmmaChunkDefault(), else the mma.sync kernel. Of the wgmma kernels: the warp-specialised
  // one with a TMA producer (three consumer warpgroups, 192-row tiles, when those pad fewer rows
  // than 128-row ones, else two); with kv.num_pages = 0 or RESA_CUDA_CHUNK_TMA=0 three
  // all-loading warpgroups when they pad at most 5% more rows than two, else the
  // warp-specialised one on cp.async. kMmaSync forces the mma.sync kernel (any device; the
  // baseline `resa-bench kernels` times beside the default); kWgmma (all-loading, two or three
  // warpgroups by the 5% rule) and kWgmmaWs (warp-specialised, consumers as above) force a
  // wgmma family and fail with FailedPrecondition elsewhere. Same contract and tolerance.
  ChunkKernel kernel = ChunkKernel::kAuto;

  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

size_t ChunkAttentionWorkspaceBytes(const ChunkAttentionParams& p);
// Query rows (token x group head) per CTA of the kernel ChunkAttentionCuda would run for p: 128
// or 192 on the wgmma kernels, 128 on the mma.sync one. Kernels with different tiles sum in
// different orders (results agree within the tolerance, not bit for bit).
int ChunkAttentionRowTile(const ChunkAttentionParams& p);
absl::Status ChunkAttentionCuda(const ChunkAttentionParams& p, cudaStream_t stream);

// In-place LSE merge of partial states over disjoint key sets (twin of MergeAttentionStates):
// O_a = w_a O_a + w_b O_b, w_x = exp(lse_x - lse), lse_a = logaddexp(lse_a, lse_b). An empty
// partial (lse = -inf) contributes nothing; two empty partials give O = 0, lse = -inf.
// o_* [n][head_dim], lse_* [n], fp32.
absl::Status MergeAttentionStatesCuda(float* o_a, float* lse_a, const float* o_b,
                                      const float* lse_b, int n, int head_dim, cudaStream_t stream);

}  // namespace resa::cuda
