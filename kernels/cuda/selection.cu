// K/V writes, block summaries and the fused ReSA selection (write + score + top-n) on the GPU.
//
// Two fused kernels, chosen by the number of (sequence, KV head) rows and their length:
//  * SelectKernel (<= kFewRows rows, or <= kFewLongRows of >= 128K tokens): one CTA per SM,
//    each looping over chunks of 256 blocks with all of a chunk's summary loads in flight and
//    the next chunk's issued before it is scored; the last CTA of a row selects with the keys in
//    registers (<= 16384 blocks, spread over all warps whatever the length) or in L2;
//  * SelectWideKernel (more rows: throughput): one CTA per 1-4 chunks, 2 CTAs per SM; the last
//    CTA of a row stages the keys in shared memory (or reads L2) and selects there.
// Scores read one summary part a dimension (max where the pooled query is >= 0, else min: the
// bound's larger product), whole 128-byte lines of an aligned summary group (GroupPartials). In
// both, the CTA whose chunk holds the current block writes the new token's K/V and widens that
// page's summary (its score is +inf whatever the summary says, so no CTA waits for it); scores
// become order-preserving uint32 keys; block M - 1 is kept and the threshold T of the other n - 1
// is found by 11-bit radix passes over key - min, the pivot bin's keys compacted and ranked
// directly when few. The output is every block with key > T and the lowest-numbered blocks with key
// == T, in ascending order: (score desc, block asc) exactly as TopBlocks, without any sort (the
// tail: select_tail.cuh). With threshold hints carried between decode steps
// (SelectBlocksParams::hints; launches of up to 16 rows of >= 128K tokens), the scoring CTAs also
// flag and count the blocks scoring above the hint, and the tail ranks only those when they suffice
// (CandidateTail). Figures and the cost split: docs/kernels.md, "Fused selection".
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/select_tail.cuh"
#include "kernels/cuda/selection_cuda.h"
#include "kernels/cuda/timeline.cuh"

namespace resa::cuda {
namespace {

using select_tail::CandidateTail;
using select_tail::HistBin;
using select_tail::HistOutcome;
using select_tail::HistTail;
using select_tail::kHistShiftMask;
using select_tail::kMaxHintCandidates;
using select_tail::kMaxRegKeys;
using select_tail::kRadixBins;
using select_tail::kRegKeys;
using select_tail::kSelThreads;
using select_tail::kSelWarps;
using select_tail::NextHistShift;
using select_tail::RegisterTail;
using select_tail::StridedTail;
using select_tail::TailSmem;

constexpr int kSelChunk = 256;  // blocks a CTA scores at once: 4 summary groups
constexpr unsigned kFullMask = 0xffffffffu;
// Chunks a throughput-kernel CTA scores at most: with many rows and long contexts a CTA takes
// up to 4 chunks (its fixed costs, the pooled query and the arrival, paid once per 1024 blocks)
// so that the grid comes closer to one wave of 2 CTAs per SM; short rows keep one chunk a CTA.
constexpr int kMaxWideChunks = 4;
// Up to this many (sequence, KV head) rows the latency kernel runs (one CTA per SM, keys in
// registers); more rows keep the SMs busy with scoring, and the throughput kernel runs. Long rows
// (>= 128K tokens) take the latency kernel up to kFewLongRows: its register tail costs about
// half the throughput kernel's shared-memory one, and a CTA per SM with a chunk's loads in flight
// scores as fast (H200, 256K batch 8: 1.5B 64-66 -> 57 us, 7B 99-100 -> 91 us; docs/kernels.md).
constexpr int kFewRows = 8;
constexpr int kFewLongRows = 32;
constexpr int32_t kLongRowBlocks = 8192;

struct SelectPlan {
  int32_t max_blocks = 0;
  int32_t key_stride = 0;
  size_t keys_offset = 0, bytes = 0;
  // With hints: the candidate flags, one bit a block, flag_stride bytes a row (whole chunks).
  size_t flags_offset = 0, flag_stride = 0;
};

// Rows selected from their hint's candidates / by the whole tail / by the histogram tail (a part
// of the first), since the process started (SelectionHintCounts).
__device__ unsigned long long g_hint_counts[3];

struct SelectArgs {
  SelectBlocksParams p;
  int group;
  int32_t key_stride;
  uint32_t* keys;  // [batch][num_kv_heads][key_stride]
  int* counters;   // [batch][num_kv_heads]
  uint8_t* flags;  // SelectKernel with p.hints: [batch][num_kv_heads][flag_stride] candidate bits
  size_t flag_stride;
  // With flags: [batch][num_kv_heads] candidate counts, in the workspace's counter region
  // after the arrival counters (so zero between launches like them: the tail resets them).
  uint32_t* cand_counts;
  // With flags, when the counter region has room: [batch][num_kv_heads][kRadixBins] histograms
  // of the candidates' keys for HistTail, in the counter region after cand_counts (zero between
  // launches: the tail zeroes its row's).
  uint32_t* hist;
  bool keys_in_smem;  // SelectWideKernel: the tail stages the keys in dynamic shared memory
  int wide_chunk;     // SelectWideKernel: blocks a CTA scores (a multiple of kSelChunk)
  bool early_trigger = false;  // SelectKernel: SelectBlocksParams::early_dependents
};

size_t AlignUp(size_t x) { return (x + 255) & ~size_t(255); }

SelectPlan PlanSelect(const SelectBlocksParams& p) {
  SelectPlan plan;
  plan.max_blocks = (p.max_num_keys + kPageTokens - 1) / kPageTokens;
  plan.key_stride = (plan.max_blocks + 3) / 4 * 4;  // 16-byte aligned rows of keys
  const size_t rows = size_t(p.batch) * (p.kv.num_kv_heads > 0 ? p.kv.num_kv_heads : 1);
  plan.keys_offset = kWorkspaceCounterBytes;  // counters [batch][num_kv_heads] at the front
  plan.bytes = plan.keys_offset + AlignUp(rows * plan.key_stride * sizeof(uint32_t));
  if (p.hints != nullptr) {
    plan.flags_offset = plan.bytes;
    plan.flag_stride = size_t((plan.max_blocks + kSelChunk - 1) / kSelChunk) * (kSelChunk / 8);
    plan.bytes += AlignUp(rows * plan.flag_stride);
  }
  return plan;
}

// Order-preserving map of fp32 to uint32 (larger float -> larger key); -0 is folded into +0 so
// equal scores are equal keys, as the CPU's float comparison sees them.
__device__ __forceinline__ uint32_t OrderedKey(float f) {
  if (f == 0.0f) f = 0.0f;
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
// Its inverse.
__device__ __forceinline__ float KeyScore(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// Rows shorter than this many blocks (128K tokens) keep no hint: their whole tail is about as
// fast as the hinted one (H200, first version: 32K batch 1 10.4 us whole, 12.6 us hinted; 128K
// 14.5 / 14.0).
constexpr int32_t kMinHintBlocks = 8192;
// Launches of the latency kernel with at most this many blocks over all their rows (batch x KV
// heads x a row's blocks: 1.5B 128K batch 1 is 16384, 7B 128K batch 1 32768) load both summary
// parts of a one-chunk CTA's chunk before the PDL wait, beside the previous kernel, and keep the
// query's part of each dim once the pooled query is known; other launches load the query's part
// after it (half the bytes). H200, run 46, e2e batch 1 with both parts early for rows of up to
// 8192 blocks, two rounds, git HEAD -> early, ms a step: 1.5B ReSA 32K 1.583 / 1.585 -> 1.565 /
// 1.552, 128K 1.826 / 1.825 -> 1.810 / 1.822; 7B ReSA 32K 4.222 / 4.221 -> 4.213 / 4.215, 128K
// 4.599 / 4.616 -> 4.634 / 4.625 (slower: 16.8 MB of lines beside the 7B QKV GEMV), hence the
// limit. Run 45 had measured both parts early at 256K 0.5-1% slower (docs/kernels.md).
constexpr int64_t kBothPartsEarlyLaunchBlocks = 16384;

// The current token: K/V into its slot, key folded into its page's summary. Threads [0, D).
template <int D>
__device__ __forceinline__ void WriteCurrentToken(const SelectBlocksParams& p, int b, int h,
                                                  int32_t num_keys) {
  const int tid = threadIdx.x, hkv = p.kv.num_kv_heads;
  const int32_t pos = num_keys - 1;
  const int32_t pg = p.page_tables[size_t(b) * p.page_table_stride + pos / kPageTokens];
  const int slot = pos % kPageTokens;
  const size_t src = (size_t(b) * hkv + h) * D + tid;
  const size_t dst = ((size_t(pg) * hkv + h) * kPageTokens + slot) * D + tid;
  const __nv_bfloat16 k = p.k_new[src];
  p.kv.k[dst] = k;
  p.kv.v[dst] = p.v_new[src];
  __nv_bfloat16* mn = p.kv.summary + SummaryIndex(pg, h, 0, tid, hkv, D);
  __nv_bfloat16* mx = p.kv.summary + SummaryIndex(pg, h, 1, tid, hkv, D);
  if (slot == 0) {
    *mn = k;
    *mx = k;
  } else {
    const float kf = __bfloat162float(k);
    if (kf < __bfloat162float(*mn)) *mn = k;
    if (kf > __bfloat162float(*mx)) *mx = k;
  }
}

// Pooled query into s_q: exact mean of the group's heads (sum, then one division). Ends
// synchronised. Shared by the fused selection and ScoreBlocksKernel (equal pooled queries).
template <int D>
__device__ __forceinline__ void PooledQuery(const __nv_bfloat16* q, int num_heads, int group, int b,
                                            int h, float* s_q) {
  for (int d = threadIdx.x; d < D; d += kSelThreads) {
    float sum = 0.0f;
    for (int j = 0; j < group; ++j) {
      sum += __bfloat162float(q[(size_t(b) * num_heads + h * group + j) * D + d]);
    }
    s_q[d] = sum / float(group);
  }
  __syncthreads();
}

template <int D>
__device__ __forceinline__ void PooledQuery(const SelectArgs& a, int b, int h, float* s_q) {
  PooledQuery<D>(a.p.q, a.p.num_heads, a.group, b, h, s_q);
}

// Summary scoring: the whole CTA scores a chunk of kSelChunk = 256 blocks [c0, c0 + 256) of a
// row at a time (c0 a multiple of 256; local blocks under sequence parallelism), 4 aligned groups
// of 64 blocks (kSummaryGroup, paged_kv_cuda.h). Warp w takes group w / 4 and the dims
// (D / 4) (w % 4) + [0, D / 4); lane l the group's blocks 8 (l % 8) + [0, 8) and the dims
// d0 + [0, kLaneDims), d0 = (D / 4) (w % 4) + kLaneDims (l / 8), kLaneDims = D / 16. Per dim one
// 16-byte load: the 8 blocks' max where the pooled query is >= 0, their min where it is < 0.
// That is the Quest bound's larger product, max(q mx, q mn) = q (q >= 0 ? mx : mn), exactly in
// fp32 (rounding is monotone); the 8 lanes of a dim read its whole 128-byte line of the part
// needed, so half the summary bytes move. Order of the sums, one copy for every kernel so their
// scores are bit-equal: each lane folds its dims in order with fmaf, a reduce-scatter over the
// warp's 4 dim slices (xor 16, then 8) leaves two blocks' partials a lane, the group's 4 warps
// put theirs in shared memory (GroupPartials), and ChunkBound adds the 4 in warp order.
constexpr int kChunkGroups = kSelChunk / kSummaryGroup;
static_assert(kSelChunk % kSummaryGroup == 0 && kSelWarps == 4 * kChunkGroups,
              "4 warps a summary group of a chunk");

template <int D>
struct SummaryLane {
  static constexpr int kLaneDims = D / 16;
  // First dim of the lane's slice.
  __device__ static int FirstDim(int warp, int lane) {
    return (D / 4) * (warp % 4) + kLaneDims * (lane / 8);
  }
};

// A chunk's partial bounds: [warp][block of the warp's group].
struct ChunkPartials {
  float v[kSelWarps][kSummaryGroup];
};

// Pages of the warp's group blocks g0 + lane and g0 + 32 + lane, -1 from block `limit` on.
struct GroupPages {
  int32_t lo, hi;
};
__device__ __forceinline__ GroupPages LoadGroupPages(const int32_t* table, int32_t limit,
                                                     int32_t g0, int lane) {
  return {g0 + lane < limit ? __ldg(table + g0 + lane) : -1,
          g0 + 32 + lane < limit ? __ldg(table + g0 + 32 + lane) : -1};
}

// The first page of the aligned summary group holding the warp's blocks, in order, or -1 when
// they are placed otherwise (DeviceKvCache hands out whole groups; other placements take the
// per-page path of LoadGroup). Pages -1 past the row's end.
__device__ __forceinline__ int32_t AlignedGroupBase(GroupPages pg, int lane) {
  const int32_t base = __shfl_sync(kFullMask, pg.lo, 0);
  const bool in_place =
      (pg.lo < 0 || pg.lo == base + lane) && (pg.hi < 0 || pg.hi == base + 32 + lane);
  return __all_sync(kFullMask, in_place) && base >= 0 && base % kSummaryGroup == 0 ? base : -1;
}

// The lane's loads: v[e] = the summary part ((parts >> e) & 1: 0 min, 1 max) of dim
// FirstDim + e for its 8 blocks, block 8 (lane % 8) + j in bf16 j; 0 for blocks without a page.
// Warp-uniform `base`: one 16-byte load a dim from the aligned group, else 8 two-byte loads.
template <int D>
__device__ __forceinline__ void LoadGroup(const PagedKvCuda& kv, int h, int32_t base, GroupPages pg,
                                          int warp, int lane, uint32_t parts,
                                          uint4 (&v)[SummaryLane<D>::kLaneDims]) {
  constexpr int KD = SummaryLane<D>::kLaneDims;
  const int so = lane % 8, d0 = SummaryLane<D>::FirstDim(warp, lane);
  const int hkv = kv.num_kv_heads;
  if (base >= 0) {
    const __nv_bfloat16* mn = kv.summary + SummaryIndex(base + 8 * so, h, 0, d0, hkv, D);
    const __nv_bfloat16* mx = mn + D * kSummaryGroup;
#pragma unroll
    for (int e = 0; e < KD; ++e) {
      v[e] = detail::LoadStream(((parts >> e) & 1 ? mx : mn) + e * kSummaryGroup);
    }
    return;
  }
  // Block j's bits enter at the top and move down 16 bits a block: block j ends in bf16 j.
#pragma unroll
  for (int e = 0; e < KD; ++e) v[e] = make_uint4(0, 0, 0, 0);
#pragma unroll 1
  for (int j = 0; j < 8; ++j) {
    const int slot = 8 * so + j;
    const int32_t lo = __shfl_sync(kFullMask, pg.lo, slot % 32);
    const int32_t hi = __shfl_sync(kFullMask, pg.hi, slot % 32);
    const int32_t page = slot < 32 ? lo : hi;
    const unsigned short* mn = reinterpret_cast<const unsigned short*>(kv.summary) +
                               SummaryIndex(page < 0 ? 0 : page, h, 0, d0, hkv, D);
    const unsigned short* mx = mn + D * kSummaryGroup;
#pragma unroll
    for (int e = 0; e < KD; ++e) {
      const uint32_t bits =
          page < 0 ? 0u : uint32_t(__ldg(((parts >> e) & 1 ? mx : mn) + e * kSummaryGroup));
      v[e].x = __funnelshift_r(v[e].x, v[e].y, 16);
      v[e].y = __funnelshift_r(v[e].y, v[e].z, 16);
      v[e].z = __funnelshift_r(v[e].z, v[e].w, 16);
      v[e].w = __funnelshift_r(v[e].w, bits, 16);
    }
  }
}

// The parts of the lane's dims: bit e set where the pooled query's dim FirstDim + e is >= 0 (the
// max).
template <int D>
__device__ __forceinline__ uint32_t LaneParts(const float* s_q, int warp, int lane) {
  const int d0 = SummaryLane<D>::FirstDim(warp, lane);
  uint32_t parts = 0;
#pragma unroll
  for (int e = 0; e < SummaryLane<D>::kLaneDims; ++e) {
    parts |= uint32_t(s_q[d0 + e] >= 0.0f) << e;
  }
  return parts;
}

// The warp's partial bounds (its dim slice) of its group's 64 blocks from LoadGroup's v and the
// pooled query s_q (shared memory) into sp.v[warp]. All 32 lanes call; ChunkBound reads them
// after a CTA barrier.
template <int D>
__device__ __forceinline__ void GroupPartials(const uint4 (&v)[SummaryLane<D>::kLaneDims],
                                              const float* s_q, int warp, int lane,
                                              ChunkPartials& sp) {
  constexpr int KD = SummaryLane<D>::kLaneDims;
  const float* qd = s_q + SummaryLane<D>::FirstDim(warp, lane);
  float acc[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) acc[j] = 0.0f;
#pragma unroll
  for (int e = 0; e < KD; ++e) {
    const uint32_t w[4] = {v[e].x, v[e].y, v[e].z, v[e].w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      acc[2 * j] = fmaf(qd[e], detail::Bf16Lo(w[j]), acc[2 * j]);
      acc[2 * j + 1] = fmaf(qd[e], detail::Bf16Hi(w[j]), acc[2 * j + 1]);
    }
  }
  float a4[4];
  const bool up16 = lane & 16, up8 = lane & 8;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float send = up16 ? acc[k] : acc[k + 4];
    a4[k] = (up16 ? acc[k + 4] : acc[k]) + __shfl_xor_sync(kFullMask, send, 16);
  }
  float2 a2;
  {
    const float send0 = up8 ? a4[0] : a4[2], send1 = up8 ? a4[1] : a4[3];
    a2.x = (up8 ? a4[2] : a4[0]) + __shfl_xor_sync(kFullMask, send0, 8);
    a2.y = (up8 ? a4[3] : a4[1]) + __shfl_xor_sync(kFullMask, send1, 8);
  }
  // Lane l now holds blocks 8 (l % 8) + 4 up16 + 2 up8 + {0, 1} of the group.
  const int slot = 8 * (lane % 8) + 4 * int(up16) + 2 * int(up8);
  *reinterpret_cast<float2*>(&sp.v[warp][slot]) = a2;
}

// The bound of chunk block t < kSelChunk once every warp's GroupPartials are in.
__device__ __forceinline__ float ChunkBound(const ChunkPartials& sp, int t) {
  const int w = 4 * (t / kSummaryGroup), slot = t % kSummaryGroup;
  return ((sp.v[w][slot] + sp.v[w + 1][slot]) + sp.v[w + 2][slot]) + sp.v[w + 3][slot];
}

// One chunk's partials with the parts chosen by the query (the throughput and SP kernels); the
// caller synchronises the CTA before ChunkBound.
template <int D>
__device__ __forceinline__ void ChunkPartialsOf(const PagedKvCuda& kv, const int32_t* table,
                                                int32_t limit, int32_t c0, int h, int warp,
                                                int lane, uint32_t parts, const float* s_q,
                                                ChunkPartials& sp) {
  const GroupPages pg = LoadGroupPages(table, limit, c0 + kSummaryGroup * (warp / 4), lane);
  uint4 v[SummaryLane<D>::kLaneDims];
  LoadGroup<D>(kv, h, AlignedGroupBase(pg, lane), pg, warp, lane, parts, v);
  GroupPartials<D>(v, s_q, warp, lane, sp);
}

// Arrival after this CTA's keys are stored: true in the last of the row's n_ctas CTAs, which
// then sees every key. One release-acquire atomic after the CTA barrier publishes this CTA's
// keys and flags and, in the last CTA, acquires everyone's (the tail reads them from L2); the
// counter resets itself for the next launch, a later kernel, so no fence follows. (Until run
// 43: a __threadfence(), MEMBAR.SC.GPU, in every thread before the barrier and another in the
// last CTA after the reset; docs/kernels.md has the A/B.)
__device__ __forceinline__ bool ArriveLast(const SelectArgs& a, int b, int h, int n_ctas,
                                           int* s_last) {
  __syncthreads();
  int* counter = a.counters + size_t(b) * a.p.kv.num_kv_heads + h;
  timeline::Stamp(kTlSelectScored);
  if (threadIdx.x == 0) *s_last = detail::AtomicAddAcqRel(counter, 1) == n_ctas - 1;
  __syncthreads();
  if (!*s_last) return false;
  if (threadIdx.x == 0) *counter = 0;
  return true;
}

// The selection of sequence b when it has no blocks: a count of 0, written once (CTA 0 of KV
// head 0).
__device__ __forceinline__ void SelectNoBlocks(const SelectBlocksParams& p, int b, int h) {
  if (blockIdx.x == 0 && h == 0 && threadIdx.x == 0) p.num_blocks[b] = 0;
}

// The end of row (b, h) once this CTA's keys are stored: the last of its n_ctas CTAs (ArriveLast)
// writes the row's n = NumSelectedBlocksCuda(M, ...) blocks to out: all M when n >= M; else block
// M - 1 last and, when n > 1, pick(n, out) selects need = n - 1 of the blocks [0, M - 1), with
// s.hist zero and s.kmin / s.kmax / s.ncand initialised. hkv is the caller's p.kv.num_kv_heads,
// read before the arrival's fences (read here, after them, it would be loaded again).
template <typename Pick>
__device__ __forceinline__ void SelectRow(const SelectArgs& a, int b, int h, int hkv, int n_ctas,
                                          int32_t M, TailSmem& s, int* s_last, Pick pick) {
  const SelectBlocksParams& p = a.p;
  const int tid = threadIdx.x;
  if (!ArriveLast(a, b, h, n_ctas, s_last)) return;
  const int32_t n = NumSelectedBlocksCuda(M, p.ratio, p.min_blocks);
  int32_t* out = p.blocks + (size_t(b) * hkv + h) * p.blocks_stride;
  if (h == 0 && tid == 0) p.num_blocks[b] = n;
  if (n >= M) {
    for (int32_t i = tid; i < M; i += kSelThreads) out[i] = i;
    return;
  }
  if (tid == 0) out[n - 1] = M - 1;  // block M - 1 (+inf) is always kept, last
  if (n <= 1) return;
  for (int i = tid; i < kRadixBins; i += kSelThreads) s.hist[i] = 0;
  if (tid == 0) s.kmin = 0xffffffffu, s.kmax = 0, s.ncand = 0;
  pick(n, out);
}

// Latency kernel (few rows: batch x KV heads <= kFewRows, or <= kFewLongRows long ones). Grid
// (CTAs per row, KV head, sequence), 1 CTA per SM; CTA c scores chunks c, c + gridDim.x, ...
// (all of its summary loads for a chunk in flight at once, the next chunk's loads issued before
// this one is scored), so a row longer than one wave of chunks needs no second wave. The last
// CTA selects with the keys in registers (<= 16384 blocks) or in L2.
template <int D, bool HINTS>
__global__ void __launch_bounds__(kSelThreads, 1) SelectKernel(const SelectArgs a) {
  __shared__ float s_q[D];
  __shared__ ChunkPartials s_part[2];
  __shared__ TailSmem s;
  __shared__ int s_last;
  // The next kernel is scheduled as this kernel's blocks exit or, with a.early_trigger, once
  // every CTA has scored (before step 6; never earlier: the sparse decode scheduled during the
  // scoring measured ~8 us per layer slower, docs/cuda_backend.md). The wait comes after the
  // first two chunks' page ids are loaded: num_keys and the page table are the host's. The
  // summaries are read after the pooled query (the sign of each of its dims picks the part);
  // those of every page but the current one are written by kernels two or more launches back,
  // which PDL has completed (at most one kernel runs ahead: launch.h), and the current page's
  // may be read before or after WriteCurrentToken, its block scores +inf either way. CTAs of
  // one chunk of a small launch (kBothPartsEarlyLaunchBlocks) load both parts of it before the
  // wait.

  timeline::Stamp(kTlSelectEntry);
  const SelectBlocksParams& p = a.p;
  const int hkv = p.kv.num_kv_heads;
  const int b = blockIdx.z, h = blockIdx.y;
  const int tid = threadIdx.x;
  const int32_t* table = p.page_tables + size_t(b) * p.page_table_stride;
  constexpr int KD = SummaryLane<D>::kLaneDims;
  const int warp = tid / 32, lane = tid % 32;
  // Warp w reads its dim slice of group w / 4 of each of its chunks (GroupPartials). The first
  // chunk's page ids are loaded together with num_keys (inside the table row, checked against the
  // length afterwards).
  const int32_t gw = kSummaryGroup * (warp / 4);  // the warp's group in a chunk
  GroupPages pg =
      LoadGroupPages(table, p.page_table_stride, int32_t(blockIdx.x) * kSelChunk + gw, lane);
  const int32_t num_keys = p.num_keys[b];
  const int32_t M = (num_keys + kPageTokens - 1) / kPageTokens;
  const int n_chunks = (M + kSelChunk - 1) / kSelChunk;
  const int n_ctas = min(n_chunks, int(gridDim.x));
  if (M == 0) {
    detail::GridDependencyWait();
    return SelectNoBlocks(p, b, h);
  }
  if (int(blockIdx.x) >= n_ctas) return;  // reads nothing an earlier kernel writes
  uint32_t* gkeys = a.keys + (size_t(b) * hkv + h) * a.key_stride;
  // With hints (rows of kMinHintBlocks to kMaxRegKeys + 1 blocks that keep some but not all),
  // each warp also flags its blocks whose key is >= the row's hint key, one bit a block, and
  // counts them, for CandidateTail. A hint is stored as a score over the pooled query's L1
  // norm: scores are positively homogeneous in the query, so a query that only changed its
  // scale keeps its threshold's rank.
  const int32_t n_sel = NumSelectedBlocksCuda(M, p.ratio, p.min_blocks);
  const bool use_hint =
      HINTS && M - 1 >= kMinHintBlocks && M - 1 <= kMaxRegKeys && n_sel > 1 && n_sel < M;
  const size_t row = size_t(b) * hkv + h;
  uint8_t* flags = use_hint ? a.flags + row * a.flag_stride : nullptr;
  uint32_t* hist = use_hint && a.hist != nullptr ? a.hist + row * kRadixBins : nullptr;
  uint32_t hint = 0, hint_shift = 0, warp_cands = 0;  // warp_cands: this warp's candidates (lane 0)
  float q_norm = 0.0f;

  // 1. The first chunk's pages (its summary loads wait for the pooled query, the previous
  // kernel's: which part each dim needs depends on its sign) and the next chunk's page ids.
  {
    const int32_t g0 = int32_t(blockIdx.x) * kSelChunk + gw;
    if (g0 + lane >= M) pg.lo = -1;
    if (g0 + 32 + lane >= M) pg.hi = -1;
  }
  uint4 v[KD];
  uint32_t parts = 0;
  {
    const GroupPages first_pg = pg;
    const int next = int(blockIdx.x + gridDim.x);
    if (next < n_chunks) {
      pg = LoadGroupPages(table, M, next * kSelChunk + gw, lane);
    }
    // A CTA of one chunk of a small launch loads both parts of it before the wait (the loads
    // overlap the previous kernel) and keeps the query's part of each dim after the pooled query
    // (CTA-uniform; either way the same values).
    const bool both_early =
        next >= n_chunks && int64_t(M) * gridDim.y * gridDim.z <= kBothPartsEarlyLaunchBlocks;
    uint4 v_max[KD];
    if (both_early) {
      const int32_t base = AlignedGroupBase(first_pg, lane);
      LoadGroup<D>(p.kv, h, base, first_pg, warp, lane, 0u, v);
      LoadGroup<D>(p.kv, h, base, first_pg, warp, lane, ~0u, v_max);
    }
    // The previous kernel's results (q, k_new, v_new; the keys workspace) from here on.
    detail::GridDependencyWait();
    timeline::Stamp(kTlSelectWaited);
    // A stored hint: the ratio's fp32 bits, the low 5 (kHistShiftMask) the histogram's shift.
    float hint_ratio = 0.0f;
    if (use_hint) {
      const uint32_t word = __ldcg(p.hints + row);
      hint_ratio = __uint_as_float(word & ~kHistShiftMask);
      hint_shift = word & kHistShiftMask;
    }
    // 2. The current token, when this CTA holds it (its chunk's turn may come later in the loop,
    // but the summary loads may see the page before or after the write either way: its block
    // scores +inf).
    const int cur_chunk = (M - 1) / kSelChunk;
    if (p.k_new != nullptr && cur_chunk % int(gridDim.x) == int(blockIdx.x) && tid < D) {
      WriteCurrentToken<D>(p, b, h, num_keys);
    }
    // 3. Pooled query, and with a hint its L1 norm (every warp the same butterfly sum, so every
    // CTA the same bits) and the key.
    PooledQuery<D>(a, b, h, s_q);
    if (use_hint) {
      float l1 = 0.0f;
#pragma unroll
      for (int i = 0; i < D / 32; ++i) l1 += fabsf(s_q[lane + 32 * i]);
#pragma unroll
      for (int o = 16; o > 0; o /= 2) l1 += __shfl_xor_sync(kFullMask, l1, o);
      q_norm = l1;
      hint = OrderedKey(hint_ratio * q_norm);
    }
    parts = LaneParts<D>(s_q, warp, lane);
    if (both_early) {
#pragma unroll
      for (int e = 0; e < KD; ++e) {
        if ((parts >> e) & 1u) v[e] = v_max[e];
      }
    } else {
      LoadGroup<D>(p.kv, h, AlignedGroupBase(first_pg, lane), first_pg, warp, lane, parts, v);
    }
  }

  int buf = 0;
#pragma unroll 1
  for (int chunk = blockIdx.x; chunk < n_chunks; chunk += gridDim.x) {
    const int32_t c0 = chunk * kSelChunk;
    // 4. The next chunk's summaries (now the query's parts only) and the page ids of the one
    // after, in flight while this chunk is scored.
    const int next = chunk + int(gridDim.x);
    uint4 vn[KD];
    if (next < n_chunks) {  // CTA-uniform
      LoadGroup<D>(p.kv, h, AlignedGroupBase(pg, lane), pg, warp, lane, parts, vn);
      const int after = next + int(gridDim.x);
      if (after < n_chunks) pg = LoadGroupPages(table, M, after * kSelChunk + gw, lane);
    } else {
#pragma unroll
      for (int e = 0; e < KD; ++e) vn[e] = make_uint4(0, 0, 0, 0);
    }
    // 5. Scores: the warps' partials, then block c0 + t from thread t < 256 (warps 0-7).
    GroupPartials<D>(v, s_q, warp, lane, s_part[buf]);
    __syncthreads();
    if (tid < kSelChunk) {  // warp-uniform
      const int32_t blk = c0 + tid;
      const uint32_t key = OrderedKey(blk == M - 1 ? INFINITY : ChunkBound(s_part[buf], tid));
      if (blk < M) gkeys[blk] = key;
      if (use_hint) {  // CTA-uniform
        // Lane i holds block c0 + 32 warp + i: the warp's flag word.
        const bool cand = blk < M - 1 && key >= hint;
        const uint32_t m = __ballot_sync(kFullMask, cand);
        // HistTail's histogram (not its top bin: the tail takes that from the count).
        if (hist != nullptr && cand) {
          const uint32_t bin = HistBin(key, hint, hint_shift);
          if (bin < uint32_t(kRadixBins - 1)) atomicAdd(hist + bin, 1u);  // a reduction
        }
        if (lane == 0) {
          *reinterpret_cast<uint32_t*>(flags + c0 / 8 + 4 * warp) = m;
          warp_cands += uint32_t(__popc(m));
        }
      }
    }
    buf ^= 1;  // the next chunk's partials go to the other buffer: one barrier a chunk
#pragma unroll
    for (int e = 0; e < KD; ++e) v[e] = vn[e];
  }
  if (use_hint && lane == 0 && warp_cands != 0) {
    atomicAdd(a.cand_counts + row, warp_cands);  // result unused: a reduction, no round trip
  }
  // After its wait and its last write but the tail's: the rows' last CTAs, one a row, rank
  // while the sparse decode's CTAs are placed on the SMs the others leave.
  if (a.early_trigger) detail::LaunchDependents();
  // 6. Arrival: the last CTA of this (sequence, head) selects, the keys in registers when they fit.
  // With a hint, from the hint's candidates when there are enough and not too many: by the
  // histogram the scoring CTAs built (HistTail) when it places the threshold, else by ranking the
  // candidates (CandidateTail). Either way it leaves the next step's hint: the score above which
  // about need * 5 / 4 + 32 keys lie now, over the query's L1 norm, with the histogram's shift
  // for the threshold found now.
  SelectRow(a, b, h, hkv, n_ctas, M, s, &s_last, [&](int32_t n, int32_t* out) {
    const uint32_t need = uint32_t(n - 1);
    const uint32_t hint_rank = use_hint ? min(need + need / 4 + 32, uint32_t(M - 1)) : 0u;
    const uint32_t* cand_bits = reinterpret_cast<const uint32_t*>(flags);
    uint32_t next_hint = 0, t_key = 0;
    HistOutcome outcome = HistOutcome::kNoCandidates;
    if (hist != nullptr) {
      outcome = HistTail(s, gkeys, cand_bits, a.cand_counts + row, hist, M - 1, need, out, hint,
                         hint_shift, hint_rank, &next_hint, &t_key);
    } else if (use_hint) {
      outcome = HistOutcome::kDeclined;
    }
    const bool hinted = outcome == HistOutcome::kDone ||
                        (outcome == HistOutcome::kDeclined &&
                         CandidateTail(s, gkeys, cand_bits, a.cand_counts + row, M - 1, need, out,
                                       hint_rank, &next_hint, &t_key));
    if (!hinted) {
      if (M - 1 <= kMaxRegKeys) {
        RegisterTail(s, gkeys, M - 1, need, out, hint_rank, &next_hint, &t_key);
      } else {
        StridedTail(s, gkeys, nullptr, M - 1, need, out);
      }
    }
    if (use_hint && threadIdx.x == 0) {
      const float ratio = q_norm > 0.0f ? KeyScore(next_hint) / q_norm : 0.0f;
      p.hints[row] = (__float_as_uint(ratio) & ~kHistShiftMask) | NextHistShift(t_key, next_hint);
      atomicAdd(&g_hint_counts[hinted ? 0 : 1], 1ull);
      if (outcome == HistOutcome::kDone) atomicAdd(&g_hint_counts[2], 1ull);
    }
    timeline::Stamp(kTlSelectTail);
  });
  timeline::Stamp(kTlSelectEnd);
}

// Throughput kernel (many rows): grid (a.wide_chunk blocks, KV head, sequence), 512
// threads, <= 64 registers so 2 CTAs per SM; each warp loops over its blocks with the pooled query
// in registers. The last CTA of a row stages its keys in shared memory (dynamic, when
// a.keys_in_smem) and selects there.
template <int D>
__global__ void __launch_bounds__(kSelThreads, 2) SelectWideKernel(const SelectArgs a) {
  extern __shared__ uint4 s_keys4[];  // [key_stride] keys when a.keys_in_smem
  __shared__ float s_q[D];
  __shared__ ChunkPartials s_part[2];
  __shared__ TailSmem s;
  __shared__ int s_last;
  // No early trigger: the sparse decode after it measured slower when scheduled while the
  // selection runs (docs/cuda_backend.md), and after the scoring too (H200, run 41, 1.5B 32K
  // batch 8, selection then sparse decode 33.0 -> 37.6 us), so it is scheduled as this kernel's
  // blocks exit.
  detail::GridDependencyWait();

  const SelectBlocksParams& p = a.p;
  const int hkv = p.kv.num_kv_heads;
  const int b = blockIdx.z, h = blockIdx.y, chunk = blockIdx.x;
  const int tid = threadIdx.x;
  const int32_t num_keys = p.num_keys[b];
  const int32_t M = (num_keys + kPageTokens - 1) / kPageTokens;
  const int n_ctas = (M + a.wide_chunk - 1) / a.wide_chunk;
  if (M == 0) return SelectNoBlocks(p, b, h);
  if (chunk >= n_ctas) return;
  const int32_t* table = p.page_tables + size_t(b) * p.page_table_stride;
  if (p.k_new != nullptr && chunk == (M - 1) / a.wide_chunk && tid < D) {
    WriteCurrentToken<D>(p, b, h, num_keys);
  }
  PooledQuery<D>(a, b, h, s_q);

  // Scores: a chunk of 256 blocks at a time (GroupPartials, ChunkBound), the query's dims in
  // registers.
  const int warp = tid / 32, lane = tid % 32;
  const uint32_t parts = LaneParts<D>(s_q, warp, lane);
  uint32_t* gkeys = a.keys + (size_t(b) * hkv + h) * a.key_stride;
  const int32_t end = min(M, (chunk + 1) * a.wide_chunk);
  int buf = 0;
  for (int32_t c0 = chunk * a.wide_chunk; c0 < end; c0 += kSelChunk, buf ^= 1) {
    ChunkPartialsOf<D>(p.kv, table, end, c0, h, warp, lane, parts, s_q, s_part[buf]);
    __syncthreads();
    const int32_t blk = c0 + tid;
    if (tid < kSelChunk && blk < end) {
      gkeys[blk] = OrderedKey(blk == M - 1 ? INFINITY : ChunkBound(s_part[buf], tid));
    }
  }

  SelectRow(a, b, h, hkv, n_ctas, M, s, &s_last, [&](int32_t n, int32_t* out) {
    StridedTail(s, gkeys, a.keys_in_smem ? reinterpret_cast<uint32_t*>(s_keys4) : nullptr, M - 1,
                uint32_t(n - 1), out);
  });
}

// Sequence parallelism: global blocks i < num_blocks with i % sp_size == sp_rank.
__host__ __device__ __forceinline__ int32_t LocalBlockCount(int32_t num_blocks, int sp_rank,
                                                            int sp_size) {
  return num_blocks > sp_rank ? (num_blocks - sp_rank + sp_size - 1) / sp_size : 0;
}

// Quest scores of one SP rank's blocks: grid (chunk of kSelChunk local blocks, KV head,
// sequence), 512 threads, the scoring of SelectWideKernel (ChunkPartialsOf) without the top-n.
template <int D>
__global__ void __launch_bounds__(kSelThreads, 2)
    ScoreBlocksKernel(const ScoreBlocksParams p, int group) {
  __shared__ float s_q[D];
  __shared__ ChunkPartials s_part;
  detail::AwaitPreviousKernel();
  const int hkv = p.kv.num_kv_heads;
  const int b = blockIdx.z, h = blockIdx.y;
  const int32_t M = (p.num_keys[b] + kPageTokens - 1) / kPageTokens;
  const int32_t local = LocalBlockCount(M, p.sp_rank, p.sp_size);
  const int32_t begin = int32_t(blockIdx.x) * kSelChunk;
  if (begin >= local) return;
  const int32_t end = min(local, begin + kSelChunk);
  // Local index of the current block (global M - 1) when this rank holds it, else -1.
  const int32_t current = (M - 1) % p.sp_size == p.sp_rank ? (M - 1) / p.sp_size : -1;
  const int32_t* table = p.page_tables + size_t(b) * p.page_table_stride;
  PooledQuery<D>(p.q, p.num_heads, group, b, h, s_q);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const uint32_t parts = LaneParts<D>(s_q, warp, lane);
  float* out = p.scores + (size_t(b) * hkv + h) * p.scores_stride;
  ChunkPartialsOf<D>(p.kv, table, end, begin, h, warp, lane, parts, s_q, s_part);
  __syncthreads();
  const int32_t j = begin + tid;
  if (tid < kSelChunk && j < end) out[j] = j == current ? INFINITY : ChunkBound(s_part, tid);
}

// Page table row of WriteKvParams entry s.
__device__ __forceinline__ size_t TableRow(const WriteKvParams& p, int s) {
  return size_t(p.table_index != nullptr ? p.table_index[s] : s);
}

// Copies tokens' K/V rows into their page slots: one thread per 16-byte piece.
__global__ void WriteKvKernel(const WriteKvParams p) {
  detail::AwaitPreviousKernel();
  const int s = blockIdx.y;
  const int D = p.kv.head_dim, hkv = p.kv.num_kv_heads, ch = D / 8;
  const int32_t t0 = p.token_offsets[s];
  const int32_t ntok = p.token_offsets[s + 1] - t0;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t tok = idx / (hkv * ch);
  if (tok >= ntok) return;
  const int h = int(idx / ch % hkv), c = int(idx % ch);
  const int32_t pos = p.first_pos[s] + int32_t(tok);
  const int32_t page = p.page_tables[TableRow(p, s) * p.page_table_stride + pos / kPageTokens];
  const size_t dst = ((size_t(page) * hkv + h) * kPageTokens + pos % kPageTokens) * D + c * 8;
  const size_t src = ((size_t(t0) + tok) * hkv + h) * D + c * 8;
  *reinterpret_cast<uint4*>(p.kv.k + dst) = *reinterpret_cast<const uint4*>(p.k + src);
  *reinterpret_cast<uint4*>(p.kv.v + dst) = *reinterpret_cast<const uint4*>(p.v + src);
}

// Recomputes the summaries of the pages a run touched; one thread per dim. A thread issues its
// dim's loads of all the page's valid tokens at once (one memory round trip): a loop of one
// dependent load a token took 16 round trips: 7.1 us a launch against 3.2 now on the H200 (ncu,
// a 1.5B 256K rectification pass; docs/cuda_backend.md, run 48).
__global__ void RecomputeSummaryKernel(const WriteKvParams p) {
  detail::AwaitPreviousKernel();
  const int s = blockIdx.z, h = blockIdx.y;
  const int D = p.kv.head_dim, hkv = p.kv.num_kv_heads;
  const int32_t ntok = p.token_offsets[s + 1] - p.token_offsets[s];
  if (ntok <= 0) return;
  const int32_t first_blk = p.first_pos[s] / kPageTokens;
  const int32_t last_blk = (p.first_pos[s] + ntok - 1) / kPageTokens;
  const int32_t blk = first_blk + int32_t(blockIdx.x);
  if (blk > last_blk) return;
  const int valid = min(kPageTokens, p.num_keys[s] - blk * kPageTokens);
  const int32_t page = p.page_tables[TableRow(p, s) * p.page_table_stride + blk];
  const __nv_bfloat16* kp = p.kv.k + (size_t(page) * hkv + h) * kPageTokens * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    __nv_bfloat16 x[kPageTokens];
#pragma unroll
    for (int t = 0; t < kPageTokens; ++t) {
      x[t] = t < valid ? kp[size_t(t) * D + d] : __float2bfloat16(INFINITY);
    }
    float mn = INFINITY, mx = -INFINITY;
#pragma unroll
    for (int t = 0; t < kPageTokens; ++t) {
      if (t < valid) {
        mn = fminf(mn, __bfloat162float(x[t]));
        mx = fmaxf(mx, __bfloat162float(x[t]));
      }
    }
    p.kv.summary[SummaryIndex(page, h, 0, d, hkv, D)] = __float2bfloat16(mn);  // +-inf exact
    p.kv.summary[SummaryIndex(page, h, 1, d, hkv, D)] = __float2bfloat16(mx);
  }
}

absl::Status ValidateKv(const PagedKvCuda& kv, const char* who) {
  if (kv.k == nullptr || kv.v == nullptr || kv.summary == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": null k, v or summary"));
  }
  if ((kv.head_dim != 64 && kv.head_dim != 128) || kv.num_kv_heads <= 0 ||
      kv.num_kv_heads > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": head_dim ", kv.head_dim,
                                                   " (supported: 64, 128) or num_kv_heads ",
                                                   kv.num_kv_heads));
  }
  return absl::OkStatus();
}

// Latency-kernel launches of up to this many rows use their hints (rows of 8193-16385 blocks):
// kHintRows, or RESA_CUDA_SELECT_HINT_ROWS at start (A/B runs). H200, 256K: batch 1 (2-4 rows),
// selection alone, 19.4 -> 16.9 us at 1.5B and 24.4 -> 21.7 at 7B (run 18); 1.5B batch 8 (16
// rows, run 40) 51.8 -> 49.7 us, e2e sparse 4.443 / 4.427 -> 4.336 / 4.340 ms a step, ReSA
// 5.201 / 5.151 -> 5.051 / 5.052. At 32 rows (7B batch 8) the kernel bench gained 1.5 us
// (86.6 -> 85.1) but the e2e steps lost (sparse 9.191 / 9.238 -> 9.317 / 9.324 ms, ReSA 11.229 /
// 11.221 -> 11.246 / 11.276), so those launches keep the whole tail.
constexpr int kHintRows = 16;
int HintRows() {
  static const int n = [] {
    const char* v = std::getenv("RESA_CUDA_SELECT_HINT_ROWS");
    return v != nullptr && std::atoi(v) > 0 ? std::atoi(v) : kHintRows;
  }();
  return n;
}

}  // namespace

size_t SelectBlocksWorkspaceBytes(const SelectBlocksParams& p) { return PlanSelect(p).bytes; }

absl::StatusOr<SelectionHintCounts> ReadSelectionHintCounts() {
  unsigned long long c[3] = {0, 0, 0};
  if (auto st = CudaStatus(cudaMemcpyFromSymbol(c, g_hint_counts, sizeof(c)),
                           "reading the selection hint counters");
      !st.ok()) {
    return st;
  }
  return SelectionHintCounts{int64_t(c[0]), int64_t(c[1]), int64_t(c[2])};
}

absl::StatusOr<SelectTailPhases> ReadSelectTailPhases() {
  SelectTailPhases r;
#ifdef RESA_SELECT_TAIL_STAMPS
  static constexpr const char* kNames[select_tail::kTailPhases] = {
      "count",   "scan",   "ids",     "gather",   "hist",  "pivot",
      "compact", "narrow", "bitmaps", "out_scan", "stores"};
  unsigned long long c[select_tail::kTailPhases + 1] = {};
  if (auto st = CudaStatus(cudaMemcpyFromSymbol(c, select_tail::g_tail_phase_cycles, sizeof(c)),
                           "reading the selection tail's phase clock");
      !st.ok()) {
    return st;
  }
  r.names.assign(kNames, kNames + select_tail::kTailPhases);
  r.cycles.assign(c, c + select_tail::kTailPhases);
  r.tails = c[select_tail::kTailPhases];
#endif
  return r;
}

namespace detail {
absl::Status ResetSelectTimeline() {
#ifdef RESA_KERNEL_TIMELINE
  return timeline::ResetStamps();
#else
  return absl::OkStatus();
#endif
}
absl::Status ReadSelectTimeline(uint64_t (*stamps)[2]) {
#ifdef RESA_KERNEL_TIMELINE
  return timeline::ReadStamps(stamps);
#else
  (void)stamps;
  return absl::OkStatus();
#endif
}
}  // namespace detail

absl::Status SelectBlocksCuda(const SelectBlocksParams& p, cudaStream_t stream) {
  if (auto st = ValidateKv(p.kv, "SelectBlocksCuda"); !st.ok()) return st;
  if (p.q == nullptr || p.num_keys == nullptr || p.page_tables == nullptr || p.blocks == nullptr ||
      p.num_blocks == nullptr || (p.k_new == nullptr) != (p.v_new == nullptr)) {
    return absl::InvalidArgumentError(
        "SelectBlocksCuda: null q, num_keys, page_tables, blocks or num_blocks, or only one of "
        "k_new / v_new");
  }
  if (p.num_heads <= 0 || p.num_heads % p.kv.num_kv_heads != 0 || p.batch <= 0 || p.batch > 65535 ||
      p.max_num_keys < 0 || p.page_table_stride <= 0) {
    return absl::InvalidArgumentError("SelectBlocksCuda: bad num_heads, batch or max_num_keys");
  }
  const SelectPlan plan = PlanSelect(p);
  const int32_t n_max = NumSelectedBlocksCuda(plan.max_blocks, p.ratio, p.min_blocks);
  if (p.blocks_stride < n_max) {
    return absl::InvalidArgumentError(
        absl::StrCat("SelectBlocksCuda: blocks_stride ", p.blocks_stride, " < ", n_max));
  }
  if (p.workspace == nullptr || p.workspace_bytes < plan.bytes) {
    return absl::InvalidArgumentError(absl::StrCat("SelectBlocksCuda: workspace of ",
                                                   p.workspace_bytes, " bytes, need ", plan.bytes));
  }
  if (plan.max_blocks == 0) return absl::OkStatus();
  SelectArgs a;
  a.p = p;
  a.group = p.num_heads / p.kv.num_kv_heads;
  a.key_stride = plan.key_stride;
  if (int64_t(p.batch) * p.kv.num_kv_heads * (p.hints != nullptr ? 2 : 1) > kWorkspaceCounters) {
    return absl::InvalidArgumentError(
        "SelectBlocksCuda: batch x num_kv_heads exceeds the counters");
  }
  a.keys = reinterpret_cast<uint32_t*>(static_cast<char*>(p.workspace) + plan.keys_offset);
  a.counters = static_cast<int*>(p.workspace);
  a.flags = nullptr;
  a.flag_stride = plan.flag_stride;
  a.cand_counts = nullptr;
  a.hist = nullptr;
  const int chunks = (plan.max_blocks + kSelChunk - 1) / kSelChunk;
  const int rows = p.batch * p.kv.num_kv_heads;
  cudaError_t err = cudaSuccess;
  if (rows <= kFewRows || (rows <= kFewLongRows && plan.max_blocks >= kLongRowBlocks)) {
    // One wave: at most (SMs / rows) CTAs per row, each looping over its chunks.
    const int sms = MultiprocessorCount();
    const dim3 grid(std::min(chunks, std::max(1, sms / rows)), p.kv.num_kv_heads, p.batch);
    a.early_trigger = p.early_dependents;
    a.keys_in_smem = false;
    a.wide_chunk = kSelChunk;
    // Hints only for rows long enough to gain, in launches of up to HintRows() rows; the other
    // launches run the kernel without the hint code (HintRows has the figures).
    const bool hints =
        p.hints != nullptr && rows <= HintRows() && plan.max_blocks - 1 >= kMinHintBlocks;
    if (hints) {
      a.flags = reinterpret_cast<uint8_t*>(static_cast<char*>(p.workspace) + plan.flags_offset);
      a.cand_counts = reinterpret_cast<uint32_t*>(a.counters + rows);
      // HistTail's histograms after the candidate counts, 16-byte aligned, when they fit (at
      // most 31 rows; the default HintRows() is 16).
      const size_t hist_at = (size_t(2) * rows + 3) / 4 * 4;
      if (hist_at + size_t(rows) * kRadixBins <= size_t(kWorkspaceCounters)) {
        a.hist = reinterpret_cast<uint32_t*>(a.counters) + hist_at;
      }
    }
    auto kernel = p.kv.head_dim == 64
                      ? (hints ? SelectKernel<64, true> : SelectKernel<64, false>)
                      : (hints ? SelectKernel<128, true> : SelectKernel<128, false>);
    return CudaStatus(LaunchKernel(kernel, grid, dim3(kSelThreads), 0, stream, {}, a),
                      "launching SelectKernel");
  }
  // Chunks per CTA: enough that rows x CTAs is about one wave of 2 CTAs per SM, at most 4.
  const int64_t wave = int64_t(MultiprocessorCount()) * 2;
  const int per_cta =
      int(std::clamp<int64_t>((int64_t(rows) * chunks + wave - 1) / wave, 1, kMaxWideChunks));
  a.wide_chunk = per_cta * kSelChunk;
  const dim3 grid((chunks + per_cta - 1) / per_cta, p.kv.num_kv_heads, p.batch);
  a.keys_in_smem = plan.max_blocks <= kMaxRegKeys;
  const int smem = a.keys_in_smem ? int(plan.key_stride * sizeof(uint32_t)) : 0;
  // The dynamic shared-memory limit is raised once per device to its largest use.
  constexpr int kMaxSmem = (kMaxRegKeys + 4) * int(sizeof(uint32_t));
  static std::atomic<uint64_t> attr_done[2];
  if (p.kv.head_dim == 64) {
    err = OncePerDevice(attr_done[0], [] {
      return cudaFuncSetAttribute(SelectWideKernel<64>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSmem);
    });
    if (err == cudaSuccess) {
      err = LaunchKernel(SelectWideKernel<64>, grid, dim3(kSelThreads), smem, stream, {}, a);
    }
  } else {
    err = OncePerDevice(attr_done[1], [] {
      return cudaFuncSetAttribute(SelectWideKernel<128>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSmem);
    });
    if (err == cudaSuccess) {
      err = LaunchKernel(SelectWideKernel<128>, grid, dim3(kSelThreads), smem, stream, {}, a);
    }
  }
  return CudaStatus(err, "launching SelectWideKernel");
}

absl::Status ScoreBlocksCuda(const ScoreBlocksParams& p, cudaStream_t stream) {
  if (auto st = ValidateKv(p.kv, "ScoreBlocksCuda"); !st.ok()) return st;
  if (p.q == nullptr || p.num_keys == nullptr || p.page_tables == nullptr || p.scores == nullptr) {
    return absl::InvalidArgumentError("ScoreBlocksCuda: null q, num_keys, page_tables or scores");
  }
  if (p.num_heads <= 0 || p.num_heads % p.kv.num_kv_heads != 0 || p.batch <= 0 || p.batch > 65535 ||
      p.max_num_keys < 0 || p.page_table_stride <= 0) {
    return absl::InvalidArgumentError("ScoreBlocksCuda: bad num_heads, batch or max_num_keys");
  }
  if (p.sp_size < 1 || p.sp_rank < 0 || p.sp_rank >= p.sp_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("ScoreBlocksCuda: sp_rank ", p.sp_rank, " of sp_size ", p.sp_size));
  }
  const int32_t max_local =
      LocalBlockCount((p.max_num_keys + kPageTokens - 1) / kPageTokens, p.sp_rank, p.sp_size);
  if (p.scores_stride < max_local) {
    return absl::InvalidArgumentError(
        absl::StrCat("ScoreBlocksCuda: scores_stride ", p.scores_stride, " < ", max_local));
  }
  if (max_local == 0) return absl::OkStatus();
  const dim3 grid((max_local + kSelChunk - 1) / kSelChunk, p.kv.num_kv_heads, p.batch);
  const int group = p.num_heads / p.kv.num_kv_heads;
  return CudaStatus(
      LaunchKernel(p.kv.head_dim == 64 ? ScoreBlocksKernel<64> : ScoreBlocksKernel<128>, grid,
                   dim3(kSelThreads), 0, stream, {}, p, group),
      "launching ScoreBlocksKernel");
}

absl::Status WriteKvCuda(const WriteKvParams& p, cudaStream_t stream) {
  if (auto st = ValidateKv(p.kv, "WriteKvCuda"); !st.ok()) return st;
  if (p.k == nullptr || p.v == nullptr || p.token_offsets == nullptr || p.first_pos == nullptr ||
      p.num_keys == nullptr || p.page_tables == nullptr || p.page_table_stride <= 0) {
    return absl::InvalidArgumentError("WriteKvCuda: null k, v or sequence arrays");
  }
  if (p.num_seqs <= 0 || p.num_seqs > 65535 || p.max_tokens < 0) {
    return absl::InvalidArgumentError("WriteKvCuda: bad num_seqs or max_tokens");
  }
  if (p.max_tokens == 0) return absl::OkStatus();
  const int threads = 256;
  const int64_t pieces = int64_t(p.max_tokens) * p.kv.num_kv_heads * (p.kv.head_dim / 8);
  cudaError_t err =
      LaunchKernel(WriteKvKernel, dim3(unsigned((pieces + threads - 1) / threads), p.num_seqs),
                   dim3(threads), 0, stream, {}, p);
  if (auto st = CudaStatus(err, "launching WriteKvKernel"); !st.ok()) return st;
  const unsigned pages = unsigned((p.max_tokens + kPageTokens - 1) / kPageTokens + 1);
  err = LaunchKernel(RecomputeSummaryKernel, dim3(pages, p.kv.num_kv_heads, p.num_seqs), dim3(128),
                     0, stream, {}, p);
  return CudaStatus(err, "launching RecomputeSummaryKernel");
}

}  // namespace resa::cuda
