// Split-KV flash-decoding over the paged bf16 cache, dense or block-sparse (one kernel).
//
// Grid: x = split of the sequence's block list, y = (KV head, chunk of <= 8 query heads of its
// group), z = sequence. A CTA of 8 warps streams its split's pages; each warp takes every 8th page
// and keeps its own online-softmax state, and the CTA merges its warps in shared memory; a CTA
// that is not in a bigger cluster writes its normalised result (the row's output, or its split's
// partial) straight from that merge. Then, by the number of splits a row needs:
//  * <= kMaxClusters (launches of many rows, e.g. batch 8): every CTA writes its partial and the
//    last CTA of the row to arrive (atomic counter) folds them, in the same launch.
//  * more, dense rows (batch 1-4): one wave of CTAs without clusters, each writes its partial,
//    and DecodeMergeKernel, launched next (PDL), folds a row's partials, a CTA per quarter of a
//    head's dims. H200, run 39, against the 8-CTA clusters below: dense decode at batch 1 1.5B 256K
//    71.4 -> 69.7 us, 32K 18.9 -> 17.5; 7B 256K 136.4 -> 127.2, 32K 26.4 -> 25.5.
//  * more, sparse rows: the same, DecodeMergeKernel, with as few pages a split as fill one wave
//    (at least one a warp). H200, run 42, e2e ReSA batch 1 against the 8-CTA clusters below
//    (three rounds, same call): 1.5B 32K 1.621-1.642 -> 1.558-1.573 ms, 256K 2.086-2.096 ->
//    2.043-2.054; 7B 32K 4.270-4.289 -> 4.230-4.255, 256K 5.187-5.198 -> 5.138-5.168.
//  * with SetDecodeSparseClusters(true), sparse rows instead group their splits into
//    thread-block clusters of up to 8 CTAs along x: the cluster's first CTA merges the cluster's
//    states through distributed shared memory, and the last leader to arrive folds the clusters'
//    partials (<= 32).
// The chains after the PDL waits are short (H200, run 47, e2e batch 1, git HEAD's build and this
// in one call, three rounds, means: 1.5B 256K dense 2.916 -> 2.887 ms, ReSA 1.981 -> 1.961, 32K
// dense 1.476 -> 1.443; 7B 256K ReSA 4.896 -> 4.876): a sparse row's block count and first ids
// load together, the merge kernel reads the row's size before its wait, and a one-CTA cluster
// skips the shared-memory round and the two cluster barriers of the leader's merge.
//
// Tensor cores without shared-memory staging: every warp loads a whole 16-token page straight
// into registers with 16-byte streaming loads and feeds mma.m16n8k16 from them.
//  * S = Q K^T with A = Q (rows = the group's query heads, padded to 16) and B = K^T (n = 8
//    tokens, two n-tiles per page). The reduction index d may be permuted freely as long as Q
//    and K use the same permutation, so each lane loads 16 contiguous bytes of its K row and the
//    matching 16 bytes of q: lane (r, c) = (lane / 4, lane % 4) holds dims 8c + 32s + [0, 8).
//  * O^T = V^T P^T with A = V^T (m = 16 dims, k = 16 tokens) and B = P^T, whose fragment is
//    exactly the S accumulator of the same lane (the FlashAttention-2 register reuse). The m
//    (dim) index is permuted too: lane r owns dims 64j + 8r + [0, 8), loaded as 16-byte rows of
//    tokens 2c, 2c+1, 2c+8, 2c+9 and paired with byte permutes.
// The query heads of a GQA group share every K/V byte read; K/V are read exactly once.
#include <cooperative_groups.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/timeline.cuh"

namespace resa::cuda {
namespace {

using detail::kLn2;
using detail::kLog2e;

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kHeadsPerCta = 8;  // the MMA's n for P^T: query heads of one group per CTA
constexpr int kCtasPerSm = 2;
constexpr int kMaxCluster = 8;   // portable thread-block cluster size
constexpr int kMaxSplits = 256;  // per (sequence, head chunk); so <= 32 clusters to merge
constexpr int kMaxClusters = kMaxSplits / kMaxCluster;  // partials the last CTA folds
// Cluster partials the last leader loads at once: 16 puts a batch-1 row's 15 (1.5B 256K) in one
// round trip (H200 run 24: batch-1 decode 0.4-0.8 us faster than 8 at a time, batch 8 alike).
constexpr int kFold = 16;
constexpr int kMinPagesPerSplit = kWarps;
// Sparse rows whose partials are folded inside the launch (by the last CTA or the last cluster
// leader: batch 8, and batch 1-4 with DecodeSparseClusters) take at least this many pages a
// split: fewer partials to merge. Rows folded by DecodeMergeKernel take kMinPagesPerSplit
// (H200 run 42, e2e ReSA batch 1, three contexts, two rounds: 8 best or tied against 12 and
// 16 at 32K and 256K, 16 about 1% ahead at 1.5B 128K; docs/kernels.md). `resa-bench kernels` sweep
// of 20-64 at batch 1 (H200): 28 best or equal at 32K-256K for both shapes (1.5B 256K 24.0 -> 22.1
// us, 7B 32K 17.1 -> 14.8 us); batch 8 splits are longer already.
constexpr int kMinSparsePagesPerSplit = 28;
// Clustered launches of at most kFewSparseRows rows (batch 1-4 at 2 KV heads) take 16: H200 run 18,
// batch 1, 28 -> 16, kernel bench 1.5B 32K / 128K / 256K 12.5 / 14.8 / 18.4 -> 11.2 / 12.6 /
// 16.8 us, 7B 12.6 / 18.0 / 22.9 -> 11.4 / 16.6 / 22.9; e2e 1.5B sparse and ReSA 1.4-3.9%
// faster, 7B within +-0.7%. Run 16 had 16 for every launch: batch 8 at 32K got slower.
constexpr int kFewSparseRows = 8;
constexpr int kMinSparsePagesPerSplitFew = 16;
constexpr int kIdsPerRound = 512;  // page ids staged in shared memory at a time

struct DecodePlan {
  int head_chunks = 0;
  int pages_per_split = 0;
  int max_splits = 0;  // grid.x, a multiple of cluster
  int cluster = 1;
  bool merge_kernel = false;  // the split partials are folded by DecodeMergeKernel
  size_t o_offset = 0, lse_offset = 0, bytes = 0;
};

struct DecodeArgs {
  DecodeAttentionParams p;
  int group;
  int head_chunks;
  int pages_per_split;
  int max_clusters;
  float scale_log2;
  float* ws_o;    // [batch][y][max_clusters][8][head_dim], normalised partial O
  float* ws_lse;  // [batch][y][max_clusters][8], natural log
  int* counters;  // [batch][y], at the front of the workspace
  int merge_kernel;  // 1: CTAs only write their partials; DecodeMergeKernel folds them
};

size_t AlignUp(size_t x) { return (x + 255) & ~size_t(255); }

// kEarlyPage: DecodeAttentionParams::pages_before_wait for dense rows (its own instantiation, so
// that the other launches keep their code and registers).
template <int D, bool kEarlyPage = false>
__global__ void DecodeKernel(const DecodeArgs a);

std::atomic<bool>& SparseClustersFlag() {
  static std::atomic<bool> flag{[] {
    const char* v = std::getenv("RESA_CUDA_SPARSE_CLUSTERS");
    return v != nullptr && std::string_view(v) == "1";
  }()};
  return flag;
}

// CTAs of 8-CTA clusters that can be resident at once (GPC granularity makes this less than
// 2 per SM); cached per head dim.
int ClusterCapacityCtas(int head_dim) {
  static std::atomic<int> cache[2] = {0, 0};
  std::atomic<int>& slot = cache[head_dim == 64 ? 0 : 1];
  if (int v = slot.load(std::memory_order_relaxed); v > 0) return v;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(kMaxCluster * 64, 1, 1);
  cfg.blockDim = dim3(kThreads);
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = kMaxCluster;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  int clusters = 0;
  const cudaError_t err = head_dim == 64
                              ? cudaOccupancyMaxActiveClusters(&clusters, DecodeKernel<64>, &cfg)
                              : cudaOccupancyMaxActiveClusters(&clusters, DecodeKernel<128>, &cfg);
  int v = clusters * kMaxCluster;
  if (err != cudaSuccess || v <= 0) {
    cudaGetLastError();
    v = MultiprocessorCount() * kCtasPerSm * 7 / 8;  // no device: a typical GPC loss
  }
  slot.store(v, std::memory_order_relaxed);
  return v;
}

// Splits per row fill one wave of kCtasPerSm CTAs per SM over all rows. Rows that need more
// than kMaxClusters splits (batch 1-4 at long context) leave the fold to DecodeMergeKernel, or,
// sparse rows with SetDecodeSparseClusters(true), group the splits into 8-CTA clusters, sized
// by the cluster capacity so that they too run in one wave.
DecodePlan PlanDecode(const DecodeAttentionParams& p) {
  DecodePlan plan;
  const int hkv = p.kv.num_kv_heads > 0 ? p.kv.num_kv_heads : 1;
  const int group = p.num_heads / hkv;
  plan.head_chunks = (group + kHeadsPerCta - 1) / kHeadsPerCta;
  const int64_t max_blocks = p.blocks != nullptr
                                 ? p.max_num_blocks
                                 : (int64_t(p.max_num_keys) + kPageTokens - 1) / kPageTokens;
  const int64_t rows = int64_t(p.batch) * hkv * plan.head_chunks;
  int64_t s0 = rows > 0 ? int64_t(MultiprocessorCount()) * kCtasPerSm / rows : 1;
  int64_t cluster = 1;
  const bool sparse = p.blocks != nullptr;
  if (s0 > kMaxClusters && !(sparse && DecodeSparseClusters())) {
    plan.merge_kernel = true;
    s0 = s0 > kMaxSplits ? kMaxSplits : s0;
  } else if (s0 > kMaxClusters) {
    cluster = kMaxCluster;
    s0 = ClusterCapacityCtas(p.kv.head_dim) / rows / cluster * cluster;
    s0 = s0 > kMaxSplits ? kMaxSplits : (s0 < cluster ? cluster : s0);
  }
  s0 = s0 < 1 ? 1 : s0;
  int64_t pps = max_blocks > 0 ? (max_blocks + s0 - 1) / s0 : 1;
  pps = pps < kMinPagesPerSplit ? kMinPagesPerSplit : pps;
  const int64_t min_sparse =
      rows <= kFewSparseRows ? kMinSparsePagesPerSplitFew : kMinSparsePagesPerSplit;
  // The sparse minimum keeps the last CTA's (or leader's) fold short; the merge kernel folds a
  // row's partials in parallel, so its rows only fill the wave.
  if (sparse && pps < min_sparse && !plan.merge_kernel) pps = min_sparse;
  plan.pages_per_split = int(pps);
  const int64_t splits = max_blocks > 0 ? (max_blocks + pps - 1) / pps : 1;
  plan.cluster = int(splits < cluster ? splits : cluster);
  plan.max_splits = int((splits + plan.cluster - 1) / plan.cluster * plan.cluster);
  const int64_t max_clusters = plan.max_splits / plan.cluster;
  const size_t slots = size_t(rows) * max_clusters * kHeadsPerCta;
  plan.o_offset = kWorkspaceCounterBytes;
  plan.lse_offset = plan.o_offset + AlignUp(slots * p.kv.head_dim * sizeof(float));
  plan.bytes = plan.lse_offset + AlignUp(slots * sizeof(float));
  return plan;
}

// Online fold of the partials q = first, first + step, ... (< n) of query head hh, dims
// [d, d + 4), from the slots (slot0 + q) * kHeadsPerCta + hh of the workspace (normalised O and
// natural-log LSE), kFold loads in flight at a time: the running max mx (log2 units), the
// denominator den and the weighted sum num.
__device__ __forceinline__ void FoldPartials(const DecodeArgs& a, int head_dim, size_t slot0, int hh,
                                             int d, int first, int step, int n, float& mx,
                                             float& den, float4& num) {
  for (int q0 = first; q0 < n; q0 += step * kFold) {
    float lse[kFold];
    float4 vq[kFold];
#pragma unroll
    for (int j = 0; j < kFold; ++j) {
      const int q = q0 + j * step;
      const size_t slot = (slot0 + q) * kHeadsPerCta + hh;
      if (q < n) {
        lse[j] = __ldcg(a.ws_lse + slot) * kLog2e;
        vq[j] = __ldcg(reinterpret_cast<const float4*>(a.ws_o + slot * head_dim + d));
      }
    }
    float cm = mx;  // running max over the partials so far
#pragma unroll
    for (int j = 0; j < kFold; ++j) {
      if (q0 + j * step < n) cm = fmaxf(cm, lse[j]);
    }
    if (cm == -INFINITY) continue;    // every partial so far is empty
    const float sc = exp2f(mx - cm);  // 0 while mx is -inf
    den *= sc, num.x *= sc, num.y *= sc, num.z *= sc, num.w *= sc;
    mx = cm;
#pragma unroll
    for (int j = 0; j < kFold; ++j) {
      if (q0 + j * step < n) {
        const float wt = exp2f(lse[j] - cm);
        den += wt;
        num.x += wt * vq[j].x, num.y += wt * vq[j].y, num.z += wt * vq[j].z, num.w += wt * vq[j].w;
      }
    }
  }
}

// The pages row b reads (its selected blocks, or every page of its num_keys keys) and the
// splits they take: DecodeKernel and DecodeMergeKernel must agree on both. For a sparse row only
// after the PDL wait (num_blocks comes from the selection just before).
__device__ __forceinline__ int32_t RowPages(const DecodeArgs& a, bool sparse, int b,
                                            int32_t num_keys) {
  return sparse ? a.p.num_blocks[b] : (num_keys + kPageTokens - 1) / kPageTokens;
}
__device__ __forceinline__ int RowSplits(const DecodeArgs& a, int32_t pages) {
  return max(1, (pages + a.pages_per_split - 1) / a.pages_per_split);
}

template <int D, bool kEarlyPage>
__global__ void __launch_bounds__(kThreads, kCtasPerSm) DecodeKernel(const DecodeArgs a) {
  namespace cg = cooperative_groups;
  constexpr int KS = D / 32;  // 16-byte K loads per token row per lane
  constexpr int VJ = D / 64;  // 16-byte V loads per token row per lane
  constexpr int E = D / 16;   // m-tiles of O^T
  __shared__ __align__(16) __nv_bfloat16 sq[kHeadsPerCta * D];
  __shared__ float sm_m[kWarps][kHeadsPerCta], sm_l[kWarps][kHeadsPerCta];
  __shared__ __align__(16) float sm_o[kWarps][kHeadsPerCta][D];
  __shared__ __align__(16) float s_wt[kHeadsPerCta][kWarps];  // the warp merge's weights
  __shared__ float c_m[kHeadsPerCta], c_l[kHeadsPerCta];  // this CTA's state (log2 units)
  __shared__ __align__(16) float c_o[kHeadsPerCta][D];    // unnormalised
  __shared__ int sm_last;
  __shared__ int32_t s_page[kIdsPerRound];
  __shared__ uint8_t s_valid[kIdsPerRound];

  timeline::Stamp(kTlDecodeEntry);
  const cg::cluster_group cluster = cg::this_cluster();
  const DecodeAttentionParams& p = a.p;
  const int b = blockIdx.z;
  const int y = blockIdx.y;
  const int h = y / a.head_chunks;
  const int head_lo = h * a.group + (y % a.head_chunks) * kHeadsPerCta;
  const int nh = min(kHeadsPerCta, (h + 1) * a.group - head_lo);
  const int32_t num_keys = p.num_keys[b];
  const bool sparse = p.blocks != nullptr;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, r = lane / 4, c = lane % 4;

  // This CTA's query heads into shared memory (rows past the group are zero), before the PDL
  // wait: q, num_keys and the page table are written two or more launches back (QkvRope, the
  // host), which PDL has completed by now (at most one kernel runs ahead: launch.h); the block
  // list and num_blocks of sparse rows come from the selection just before, read after it.
  // With q_from_previous_kernel, q comes from the kernel just before and is read after the wait.
  auto stage_q = [&] {
    for (int idx = tid; idx < kHeadsPerCta * D / 8; idx += kThreads) {
      const int hh = idx / (D / 8), ch = idx % (D / 8);
      uint4 w = make_uint4(0, 0, 0, 0);
      if (hh < nh) {
        w = *reinterpret_cast<const uint4*>(p.q + (size_t(b) * p.num_heads + head_lo + hh) * D +
                                            ch * 8);
      }
      *reinterpret_cast<uint4*>(sq + hh * D + ch * 8) = w;
    }
  };
  // Page ids (and valid-token counts) of the split are gathered into shared memory a round at a
  // time, so the page loop issues its K/V loads without the block-list -> page-table chain.
  const int32_t* table = p.page_tables + size_t(b) * p.page_table_stride;
  const int32_t* list =
      sparse ? p.blocks + (size_t(b) * p.kv.num_kv_heads + h) * p.blocks_stride : nullptr;
  auto stage_ids = [&](int32_t r0, int32_t r1) {
    for (int32_t i = r0 + tid; i < r1; i += kThreads) {
      const int32_t blk = sparse ? list[i] : i;
      s_page[i - r0] = table[blk];
      s_valid[i - r0] = uint8_t(max(0, min(kPageTokens, num_keys - blk * kPageTokens)));
    }
  };
  // A dense row's pages follow from num_keys alone, so its split and first round of ids are
  // staged before the wait (the page table is the host's); a sparse row's come from the
  // selection just before. H200, e2e dense steps, same call, two rounds: batch 1 1.5B 32K
  // 1.477 / 1.477 -> 1.466 / 1.467 ms, 256K 2.926 / 2.933 -> 2.915 / 2.915, 7B 32K 4.107 /
  // 4.110 -> 4.098 / 4.098; 7B 256K and batch 8 within the spread. Each warp's first page
  // prefetched into L2 here as well was mixed (1.5B 0.1-0.5% faster, 7B 0.4-0.7% slower).
  int32_t nblk = sparse ? 0 : RowPages(a, false, b, num_keys);
  int splits = RowSplits(a, nblk);
  const int32_t i0 = blockIdx.x * a.pages_per_split;
  int32_t i1 = int(blockIdx.x) < splits ? min(nblk, i0 + a.pages_per_split) : i0;
  if (!sparse) stage_ids(i0, min(i1, i0 + kIdsPerRound));
  if (!p.q_from_previous_kernel) stage_q();
  // A page's K (token rows r and r + 8, 16 bytes a lane a step) and V (token rows 2c, 2c+1,
  // 2c+8, 2c+9; dims 64j + 8r + [0, 8)) in registers, as the MMAs take them.
  const size_t head_stride = size_t(kPageTokens) * D;
  const size_t page_stride = size_t(p.kv.num_kv_heads) * head_stride;
  using PageK = uint4[2][KS];
  using PageV = uint32_t[4][4 * VJ];
  auto load_page = [&](int32_t page, PageK& kr, PageV& vw) {
    const __nv_bfloat16* kp = p.kv.k + page * page_stride + h * head_stride;
    const __nv_bfloat16* vp = p.kv.v + page * page_stride + h * head_stride;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
#pragma unroll
      for (int s = 0; s < KS; ++s) {
        kr[half][s] = detail::LoadStream(kp + (r + 8 * half) * D + 8 * c + 32 * s);
      }
    }
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      const int tok = 2 * c + (t & 1) + 8 * (t >> 1);
#pragma unroll
      for (int j = 0; j < VJ; ++j) {
        const uint4 w = detail::LoadStream(vp + tok * D + 64 * j + 8 * r);
        vw[t][4 * j] = w.x, vw[t][4 * j + 1] = w.y, vw[t][4 * j + 2] = w.z, vw[t][4 * j + 3] = w.w;
      }
    }
  };
  // With pages_before_wait, each warp's first page, unless it is the row's last (the new
  // token's, which the kernel just before may write), is in flight during the wait: into
  // registers, not L2 as above. H200 run 55, e2e dense steps against git HEAD's build in one
  // call, three rounds, ms: 1.5B 256K batch 1 2.863 / 2.878 / 2.895 -> 2.856 / 2.854 / 2.874,
  // batch 8 14.894 / 14.951 / 15.036 -> 14.855 / 14.876 / 14.949, 32K batch 8 3.141 / 3.142 /
  // 3.191 -> 3.123 / 3.113 / 3.136; 7B 256K batch 8 30.800 / 30.727 / 30.760 -> 30.587 / 30.598
  // / 30.615; 7B batch 1 level. Its registers held across the wait cost that instantiation a
  // 24-byte stack at D = 128 (the sparse and other launches, measured 0.3-0.5 us slower with a
  // runtime flag in one kernel, keep kEarlyPage = false and their code).
  PageK first_k;
  PageV first_v;
  bool preloaded = false;
  if constexpr (kEarlyPage) {
    if (!sparse && i0 + warp < i1 && i0 + warp != nblk - 1) {
      load_page(table[i0 + warp], first_k, first_v);
      preloaded = true;
    }
  }
  detail::AwaitPreviousKernel();
  timeline::Stamp(kTlDecodeWaited);
  if (p.q_from_previous_kernel) stage_q();
  if (sparse) {
    // The row's block count and the split's first round of block ids are loaded together (the
    // ids as far as the list's capacity, max_num_blocks; those past the count are not used), so
    // the page-table loads follow one round trip after the wait instead of two.
    constexpr int kIdsPerThread = kIdsPerRound / kThreads;
    const int32_t cap = min(i0 + min(a.pages_per_split, kIdsPerRound), p.max_num_blocks);
    int32_t blk[kIdsPerThread];
#pragma unroll
    for (int u = 0; u < kIdsPerThread; ++u) {
      const int32_t i = i0 + tid + u * kThreads;
      blk[u] = i < cap ? list[i] : 0;
    }
    nblk = RowPages(a, true, b, num_keys);
    splits = RowSplits(a, nblk);
    i1 = int(blockIdx.x) < splits ? min(nblk, i0 + a.pages_per_split) : i0;
    const int32_t r1 = min(i1, i0 + kIdsPerRound);
#pragma unroll
    for (int u = 0; u < kIdsPerThread; ++u) {
      const int32_t i = i0 + tid + u * kThreads;
      if (i < r1) {
        s_page[i - i0] = table[blk[u]];
        s_valid[i - i0] = uint8_t(max(0, min(kPageTokens, num_keys - blk[u] * kPageTokens)));
      }
    }
  }
  __syncthreads();
  timeline::Stamp(kTlDecodeStaged);

  float m = -INFINITY;  // running max of head r, log2 units
  float l = 0.0f;       // this lane's share of head r's denominator
  float o[E][4];
#pragma unroll
  for (int i = 0; i < E; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;

  // One page's step of the online softmax for this warp's heads: logits, the page's max, the
  // rescaled state and O^T += V^T P^T (slot: the page's place in this round's staged ids).
  auto attend_page = [&](int32_t slot, PageK& kr, PageV& vw) {
    float s0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, s1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int s = 0; s < KS; ++s) {
      const uint4 qa = *reinterpret_cast<const uint4*>(sq + r * D + 8 * c + 32 * s);
      detail::Mma16816(s0, qa.x, 0u, qa.y, 0u, kr[0][s].x, kr[0][s].y);
      detail::Mma16816(s0, qa.z, 0u, qa.w, 0u, kr[0][s].z, kr[0][s].w);
      detail::Mma16816(s1, qa.x, 0u, qa.y, 0u, kr[1][s].x, kr[1][s].y);
      detail::Mma16816(s1, qa.z, 0u, qa.w, 0u, kr[1][s].z, kr[1][s].w);
    }
    // This lane's logits of head r: tokens 2c, 2c+1 (s0) and 2c+8, 2c+9 (s1).
    const int valid = s_valid[slot];
    float x[4] = {s0[0] * a.scale_log2, s0[1] * a.scale_log2, s1[0] * a.scale_log2,
                  s1[1] * a.scale_log2};
    if (valid < kPageTokens) {
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        const int tok = 2 * c + (t & 1) + 8 * (t >> 1);
        if (tok >= valid) {
          x[t] = -INFINITY;
#pragma unroll
          for (int w = 0; w < 4 * VJ; ++w) vw[t][w] = 0u;  // stale slots may hold NaN bits
        }
      }
    }
    const float page_max = detail::QuadMax(fmaxf(fmaxf(x[0], x[1]), fmaxf(x[2], x[3])));
    const float m_new = fmaxf(m, page_max);
    const float m_use = m_new == -INFINITY ? 0.0f : m_new;
    const float corr = exp2f(m - m_use);
    float pr[4];
#pragma unroll
    for (int t = 0; t < 4; ++t) pr[t] = exp2f(x[t] - m_use);
    l = l * corr + (pr[0] + pr[1]) + (pr[2] + pr[3]);
    m = m_new;
    // O^T columns are heads 2c and 2c+1, whose states live in lanes 8c and 8c+4.
    const float corr_a = __shfl_sync(0xffffffffu, corr, 8 * c);
    const float corr_b = __shfl_sync(0xffffffffu, corr, 8 * c + 4);
    const uint32_t pb0 = detail::PackBf16(pr[0], pr[1]);
    const uint32_t pb1 = detail::PackBf16(pr[2], pr[3]);
#pragma unroll
    for (int i = 0; i < E; ++i) {
      o[i][0] *= corr_a, o[i][1] *= corr_b, o[i][2] *= corr_a, o[i][3] *= corr_b;
      const int u0 = i, u1 = E + i;  // this lane's dim slots for rows r and r + 8 of m-tile i
      const uint32_t a0 = detail::PairHalves(vw[0][u0 / 2], vw[1][u0 / 2], u0 & 1);
      const uint32_t a1 = detail::PairHalves(vw[0][u1 / 2], vw[1][u1 / 2], u1 & 1);
      const uint32_t a2 = detail::PairHalves(vw[2][u0 / 2], vw[3][u0 / 2], u0 & 1);
      const uint32_t a3 = detail::PairHalves(vw[2][u1 / 2], vw[3][u1 / 2], u1 & 1);
      detail::Mma16816(o[i], a0, a1, a2, a3, pb0, pb1);
    }
  };

  // The preloaded page first (the first round's ids and the query are staged), so that its
  // registers are free before the loop.
  if (kEarlyPage && preloaded) attend_page(warp, first_k, first_v);
  for (int32_t r0 = i0; r0 < i1; r0 += kIdsPerRound) {
    const int32_t r1 = min(i1, r0 + kIdsPerRound);
    __syncthreads();                  // the previous round's ids are consumed
    if (r0 != i0) stage_ids(r0, r1);  // the first round is staged above
    __syncthreads();
    for (int32_t i = r0 + warp + (kEarlyPage && r0 == i0 && preloaded ? kWarps : 0); i < r1;
         i += kWarps) {
      PageK kr;
      PageV vw;
      load_page(s_page[i - r0], kr, vw);
      attend_page(i - r0, kr, vw);
    }
  }
  l = detail::QuadSum(l);

  // Warps -> CTA state. In a cluster of one CTA (every launch but the clustered sparse rows)
  // the warp merge writes this CTA's normalised result itself; in a bigger cluster it leaves
  // (c_m, c_l, c_o) in shared memory for the cluster leader.
  if (c == 0) sm_m[warp][r] = m, sm_l[warp][r] = l;
  auto dim_of = [&](int u) { return 64 * (u / 8) + 8 * r + (u % 8); };
#pragma unroll
  for (int i = 0; i < E; ++i) {
    sm_o[warp][2 * c][dim_of(i)] = o[i][0];
    sm_o[warp][2 * c + 1][dim_of(i)] = o[i][1];
    sm_o[warp][2 * c][dim_of(E + i)] = o[i][2];
    sm_o[warp][2 * c + 1][dim_of(E + i)] = o[i][3];
  }
  const int csize = int(cluster.num_blocks());
  const int ci = blockIdx.x / csize;
  const int nclusters = (splits + csize - 1) / csize;
  const bool leader = cluster.block_rank() == 0 && ci < nclusters;
  const size_t out_head = size_t(b) * p.num_heads + head_lo;
  const size_t slot0 = (size_t(b) * gridDim.y + y) * a.max_clusters;
  __syncthreads();
  timeline::Stamp(kTlDecodeLooped);
  // One thread a head: the running max over the warps, each warp's weight and the denominator,
  // once, not once a dim (the same values; H200 run 47, kernel bench against the per-dim form,
  // batch 1: dense 1.5B 256K 69.3 -> 68.4 us, 32K 16.4 -> 15.9, sparse 1.5B 256K 15.6 -> 15.0;
  // the e2e steps within their spread).
  if (tid < nh) {
    const int hh = tid;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, sm_m[w][hh]);
    float den = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      // 0 for an empty warp (m = -inf; its l and O are 0) and for an empty CTA.
      const float wt = mx == -INFINITY ? 0.0f : exp2f(sm_m[w][hh] - mx);
      s_wt[hh][w] = wt;
      den += wt * sm_l[w][hh];
    }
    c_m[hh] = mx, c_l[hh] = den;
  }
  __syncthreads();
  for (int idx = tid; idx < nh * D; idx += kThreads) {
    const int hh = idx / D, d = idx % D;
    const float4 w0 = *reinterpret_cast<const float4*>(&s_wt[hh][0]);
    const float4 w1 = *reinterpret_cast<const float4*>(&s_wt[hh][4]);
    const float wt[kWarps] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
    float num = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) num += wt[w] * sm_o[w][hh][d];
    if (csize > 1) {
      c_o[hh][d] = num;
    } else if (leader) {
      // The same values as the leader's merge of one state below (its weight is exactly 1).
      const float den = c_l[hh];
      const float ov = den > 0.0f ? num / den : 0.0f;
      if (nclusters == 1) {
        p.out[(out_head + hh) * D + d] = ov;
        if (d == 0 && p.lse_ln != nullptr) {
          p.lse_ln[out_head + hh] = den > 0.0f ? (c_m[hh] + log2f(den)) * kLn2 : -INFINITY;
        }
      } else {
        const size_t slot = (slot0 + ci) * kHeadsPerCta + hh;
        a.ws_o[slot * D + d] = ov;
        if (d == 0) a.ws_lse[slot] = den > 0.0f ? (c_m[hh] + log2f(den)) * kLn2 : -INFINITY;
      }
    }
  }
  if (csize == 1) timeline::Stamp(kTlDecodeWritten);

  // Cluster leader: merge the cluster's CTAs through distributed shared memory. Every thread
  // reads all the states it needs at once (one round trip, no barrier between the weights and
  // the sums): the batch-1 rows have only a few pages a warp, so the merges' latencies are a
  // visible share of the kernel.
  if (csize > 1) {
    cluster.sync();
    if (leader) {
      for (int idx = tid; idx < nh * D / 4; idx += kThreads) {
        const int hh = idx / (D / 4), d = idx % (D / 4) * 4;
        float mq[kMaxCluster], lq[kMaxCluster];
        float4 vq[kMaxCluster];
#pragma unroll
        for (int q = 0; q < kMaxCluster; ++q) {
          if (q < csize) {
            mq[q] = *cluster.map_shared_rank(&c_m[hh], q);
            lq[q] = *cluster.map_shared_rank(&c_l[hh], q);
            vq[q] = *reinterpret_cast<const float4*>(cluster.map_shared_rank(&c_o[hh][d], q));
          }
        }
        float mx = -INFINITY;
#pragma unroll
        for (int q = 0; q < kMaxCluster; ++q) {
          if (q < csize) mx = fmaxf(mx, mq[q]);
        }
        float den = 0.0f;
        float4 num = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
        for (int q = 0; q < kMaxCluster; ++q) {
          if (q < csize) {
            const float wt = mx == -INFINITY ? 0.0f : exp2f(mq[q] - mx);
            den += wt * lq[q];
            num.x += wt * vq[q].x, num.y += wt * vq[q].y, num.z += wt * vq[q].z,
                num.w += wt * vq[q].w;
          }
        }
        const float4 ov = den > 0.0f
                              ? make_float4(num.x / den, num.y / den, num.z / den, num.w / den)
                              : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        const float lse = den > 0.0f ? (mx + log2f(den)) * kLn2 : -INFINITY;
        if (nclusters == 1) {
          float* out = p.out + (out_head + hh) * D + d;
          out[0] = ov.x, out[1] = ov.y, out[2] = ov.z, out[3] = ov.w;
          if (d == 0 && p.lse_ln != nullptr) p.lse_ln[out_head + hh] = lse;
        } else {
          const size_t slot = (slot0 + ci) * kHeadsPerCta + hh;
          *reinterpret_cast<float4*>(a.ws_o + slot * D + d) = ov;
          if (d == 0) a.ws_lse[slot] = lse;
        }
      }
    }
  }
  if (leader && nclusters > 1 && !a.merge_kernel) {
    // The leaders' partials are published by one release-acquire atomic (thread 0, after the
    // CTA barrier), and the last leader acquires them all the same way.
    __syncthreads();
    int* counter = a.counters + size_t(b) * gridDim.y + y;
    if (tid == 0) {
      const bool last = detail::AtomicAddAcqRel(counter, 1) == nclusters - 1;
      if (last) *counter = 0;  // ready for the next launch (a later kernel: no fence)
      sm_last = last;
    }
    __syncthreads();
    if (sm_last) {  // last leader: fold the <= 32 cluster partials of this row, kFold at a time
      for (int idx = tid; idx < nh * D / 4; idx += kThreads) {
        const int hh = idx / (D / 4), d = idx % (D / 4) * 4;
        float mx = -INFINITY, den = 0.0f;
        float4 num = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        FoldPartials(a, D, slot0, hh, d, 0, 1, nclusters, mx, den, num);
        float* out = p.out + (out_head + hh) * D + d;
        if (den > 0.0f) {
          out[0] = num.x / den, out[1] = num.y / den, out[2] = num.z / den, out[3] = num.w / den;
        } else {
          out[0] = out[1] = out[2] = out[3] = 0.0f;
        }
        if (d == 0 && p.lse_ln != nullptr) {
          p.lse_ln[out_head + hh] = den > 0.0f ? (mx + log2f(den)) * kLn2 : -INFINITY;
        }
      }
    }
  }
  // Keep every CTA's shared memory alive until its leader has read it.
  if (csize > 1) cluster.sync();
  timeline::Stamp(kTlDecodeExit);
}

// Folds the split partials of DecodeKernel in merge-kernel mode: one CTA per (query head, slice
// of D / S dims, row of heads, sequence); thread (g, d4) folds partials g, g + G, ... of dims
// 4 d4 + [0, 4) of its slice, then the G groups combine in shared memory. Rows of one split
// were written by the decode itself.
template <int D, int NT, int S>
__global__ void __launch_bounds__(NT) DecodeMergeKernel(const DecodeArgs a) {
  constexpr int kD4 = D / 4 / S;
  constexpr int G = NT / kD4;
  __shared__ float s_m[G], s_den[G];
  __shared__ float4 s_num[G][kD4];
  const DecodeAttentionParams& p = a.p;
  const int hh = blockIdx.x / S, slice = blockIdx.x % S, y = blockIdx.y, b = blockIdx.z;
  const int h = y / a.head_chunks;
  const int head_lo = h * a.group + (y % a.head_chunks) * kHeadsPerCta;
  const int nh = min(kHeadsPerCta, (h + 1) * a.group - head_lo);
  // The row's size before the wait: num_keys and a sparse row's num_blocks were written two or
  // more launches back (the host or QkvRope; the selection before the decode), which has landed
  // once this kernel is scheduled (launch.h), so the fold's loads follow the wait directly.
  timeline::Stamp(kTlMergeEntry);
  const int splits = hh < nh ? RowSplits(a, RowPages(a, p.blocks != nullptr, b, p.num_keys[b])) : 1;
  detail::AwaitPreviousKernel();
  timeline::Stamp(kTlMergeWaited);
  if (splits == 1) return;
  const int tid = threadIdx.x, d4 = slice * kD4 + tid % kD4, g = tid / kD4;
  const size_t slot0 = (size_t(b) * gridDim.y + y) * a.max_clusters;
  float mx = -INFINITY, den = 0.0f;
  float4 num = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  FoldPartials(a, D, slot0, hh, 4 * d4, g, G, splits, mx, den, num);
  if (tid % kD4 == 0) s_m[g] = mx, s_den[g] = den;
  s_num[g][tid % kD4] = num;
  __syncthreads();
  if (g != 0) return;
  float m_all = -INFINITY;
#pragma unroll
  for (int k = 0; k < G; ++k) m_all = fmaxf(m_all, s_m[k]);
  float den_all = 0.0f;
  float4 n = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  if (m_all != -INFINITY) {
#pragma unroll
    for (int k = 0; k < G; ++k) {
      const float wt = exp2f(s_m[k] - m_all);  // 0 for an empty group
      const float4 v = s_num[k][tid % kD4];
      den_all += wt * s_den[k];
      n.x += wt * v.x, n.y += wt * v.y, n.z += wt * v.z, n.w += wt * v.w;
    }
  }
  const size_t out_head = size_t(b) * p.num_heads + head_lo + hh;
  float4* out = reinterpret_cast<float4*>(p.out + out_head * D) + d4;
  *out = den_all > 0.0f ? make_float4(n.x / den_all, n.y / den_all, n.z / den_all, n.w / den_all)
                        : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  if (d4 == 0 && p.lse_ln != nullptr) {
    p.lse_ln[out_head] = den_all > 0.0f ? (m_all + log2f(den_all)) * kLn2 : -INFINITY;
  }
  timeline::Stamp(kTlMergeExit);
}

absl::Status Validate(const DecodeAttentionParams& p) {
  if (p.kv.k == nullptr || p.kv.v == nullptr || p.q == nullptr || p.out == nullptr ||
      p.num_keys == nullptr || p.page_tables == nullptr) {
    return absl::InvalidArgumentError(
        "DecodeAttentionCuda: null k, v, q, out, num_keys or page_tables");
  }
  if (p.kv.head_dim != 64 && p.kv.head_dim != 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("DecodeAttentionCuda: head_dim ", p.kv.head_dim, " (supported: 64, 128)"));
  }
  if (p.kv.num_kv_heads <= 0 || p.num_heads <= 0 || p.num_heads % p.kv.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("DecodeAttentionCuda: num_heads ", p.num_heads,
                                                   " is not a multiple of num_kv_heads ",
                                                   p.kv.num_kv_heads));
  }
  if (p.batch <= 0 || p.batch > 65535 || p.max_num_keys < 0 || p.page_table_stride <= 0) {
    return absl::InvalidArgumentError(
        "DecodeAttentionCuda: bad batch, max_num_keys or page_table_stride");
  }
  if (p.blocks != nullptr && (p.num_blocks == nullptr || p.blocks_stride <= 0 ||
                              p.max_num_blocks < 0 || p.max_num_blocks > p.blocks_stride)) {
    return absl::InvalidArgumentError(
        "DecodeAttentionCuda: sparse rows need num_blocks, blocks_stride >= max_num_blocks");
  }
  return absl::OkStatus();
}

}  // namespace

bool DecodeSparseClusters() { return SparseClustersFlag().load(std::memory_order_relaxed); }
void SetDecodeSparseClusters(bool on) { SparseClustersFlag().store(on, std::memory_order_relaxed); }

size_t DecodeAttentionWorkspaceBytes(const DecodeAttentionParams& p) { return PlanDecode(p).bytes; }

absl::Status ResetKernelTimeline() {
#ifdef RESA_KERNEL_TIMELINE
  if (auto st = timeline::ResetStamps(); !st.ok()) return st;
#endif
  return detail::ResetSelectTimeline();
}

absl::StatusOr<KernelTimeline> ReadKernelTimeline() {
  KernelTimeline r;
#ifdef RESA_KERNEL_TIMELINE
  static constexpr const char* kNames[kTlPhases] = {
      "select_entry",  "select_waited", "select_end",     "decode_entry", "decode_waited",
      "decode_staged", "decode_looped", "decode_written", "decode_exit",  "merge_entry",
      "merge_waited",  "merge_exit",    "select_scored",  "select_tail"};
  uint64_t stamps[kTlPhases][2];
  for (auto& st : stamps) st[0] = ~uint64_t{0}, st[1] = 0;
  if (auto st = timeline::ReadStamps(stamps); !st.ok()) return st;
  if (auto st = detail::ReadSelectTimeline(stamps); !st.ok()) return st;
  r.names.assign(kNames, kNames + kTlPhases);
  for (const auto& st : stamps) r.first.push_back(st[0]), r.last.push_back(st[1]);
#endif
  return r;
}

bool DecodeAttentionFitsBeside(const DecodeAttentionParams& p, int busy_sms) {
  const DecodePlan plan = PlanDecode(p);
  if (plan.cluster == 1) return true;
  const int64_t ctas =
      int64_t(plan.max_splits) * std::max(p.kv.num_kv_heads, 1) * plan.head_chunks * p.batch;
  return ctas + int64_t(std::max(busy_sms, 0)) * plan.cluster <= ClusterCapacityCtas(p.kv.head_dim);
}

absl::Status DecodeAttentionCuda(const DecodeAttentionParams& p, cudaStream_t stream) {
  if (auto st = Validate(p); !st.ok()) return st;
  const DecodePlan plan = PlanDecode(p);
  if (p.workspace == nullptr || p.workspace_bytes < plan.bytes) {
    return absl::InvalidArgumentError(absl::StrCat("DecodeAttentionCuda: workspace of ",
                                                   p.workspace_bytes, " bytes, need ", plan.bytes));
  }
  DecodeArgs a;
  a.p = p;
  a.group = p.num_heads / p.kv.num_kv_heads;
  a.head_chunks = plan.head_chunks;
  a.pages_per_split = plan.pages_per_split;
  a.max_clusters = plan.max_splits / plan.cluster;
  a.scale_log2 = p.scale * kLog2e;
  a.merge_kernel = plan.merge_kernel ? 1 : 0;
  char* ws = static_cast<char*>(p.workspace);
  a.ws_o = reinterpret_cast<float*>(ws + plan.o_offset);
  a.ws_lse = reinterpret_cast<float*>(ws + plan.lse_offset);
  a.counters = reinterpret_cast<int*>(ws);
  if (int64_t(p.batch) * p.kv.num_kv_heads * plan.head_chunks > kWorkspaceCounters) {
    return absl::InvalidArgumentError("DecodeAttentionCuda: batch x heads exceeds the counters");
  }
  const dim3 grid(plan.max_splits, p.kv.num_kv_heads * plan.head_chunks, p.batch);
  const bool early = p.pages_before_wait && p.blocks == nullptr;
  auto kernel = p.kv.head_dim == 64 ? (early ? DecodeKernel<64, true> : DecodeKernel<64>)
                                    : (early ? DecodeKernel<128, true> : DecodeKernel<128>);
  const cudaError_t err = LaunchKernel(kernel, grid, dim3(kThreads), 0, stream, {plan.cluster}, a);
  if (auto st = CudaStatus(err, "cudaLaunchKernelEx(DecodeKernel)"); !st.ok()) return st;
  if (plan.merge_kernel && plan.max_splits > 1) {
    // Four slices of the head dims a (head, row): 4x the CTAs of 1/4 the threads, 16 groups of
    // partials each, so more SMs read the partials in parallel (H200, run 41, batch 1, against
    // one CTA of 256 or 512 threads a head: 1.5B 32K 17.5 -> 17.0 us, 256K 69.2 -> 68.3; 7B 32K
    // 25.4 -> 24.8, 256K 127.1 -> 126.3; 8 slices measured the same as 4).
    constexpr int kSlices = 4;
    const dim3 mgrid(kHeadsPerCta * kSlices, p.kv.num_kv_heads * plan.head_chunks, p.batch);
    const bool d64 = p.kv.head_dim == 64;
    const cudaError_t merr = LaunchKernel(
        d64 ? DecodeMergeKernel<64, 64, kSlices> : DecodeMergeKernel<128, 128, kSlices>, mgrid,
        dim3(d64 ? 64 : 128), 0, stream, {}, a);
    if (auto st = CudaStatus(merr, "cudaLaunchKernelEx(DecodeMergeKernel)"); !st.ok()) return st;
  }
  return CheckLaunch(p.blocks != nullptr ? "DecodeKernel (sparse)" : "DecodeKernel (dense)");
}

}  // namespace resa::cuda
