// K/V writes, block summaries and the fused ReSA selection (write + score + top-n) on the GPU.
//
// SelectKernel, grid (block chunk, KV head, sequence), 512 threads:
//  * the CTA whose chunk holds the current block writes the new token's K/V and widens that
//    page's summary (its score is +inf whatever the summary says, so no CTA waits for it);
//  * every CTA scores 256 blocks with 4 lanes per block (16-byte streaming loads of the bf16
//    min/max rows, q in registers) and stores order-preserving uint32 keys of the fp32 scores;
//  * the last CTA of a (sequence, head) to arrive (atomic counter, self-resetting) keeps block
//    M - 1 and radix-selects the threshold T of the other n - 1 (11-bit shared-memory histograms
//    over key - min, candidates compacted after the first pass), then writes, in ascending block
//    order, every block with key > T and the lowest-numbered blocks with key == T: (score desc,
//    block asc) exactly as TopBlocks, without any sort.
#include <atomic>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/selection_cuda.h"

namespace resa::cuda {
namespace {

constexpr int kSelThreads = 512;
constexpr int kSelWarps = kSelThreads / 32;
constexpr int kSelChunk = 256;  // blocks scored per CTA
constexpr int kMaxSmemKeys =
    16384;  // multiple of 4    // up to 256K tokens the keys are selected in shared memory
constexpr int kRadixBins = 2048;
constexpr int kMaxCandidates = 4096;  // keys of the pivot bin kept after the first pass

struct SelectPlan {
  int32_t max_blocks = 0;
  int32_t key_stride = 0;
  size_t keys_offset = 0, bytes = 0;
};

struct SelectArgs {
  SelectBlocksParams p;
  int group;
  int32_t key_stride;
  uint32_t* keys;  // [batch][num_kv_heads][key_stride]
  int* counters;   // [batch][num_kv_heads]
  bool keys_in_smem;
};

size_t AlignUp(size_t x) { return (x + 255) & ~size_t(255); }

SelectPlan PlanSelect(const SelectBlocksParams& p) {
  SelectPlan plan;
  plan.max_blocks = (p.max_num_keys + kPageTokens - 1) / kPageTokens;
  plan.key_stride = (plan.max_blocks + 3) / 4 * 4;  // 16-byte aligned rows of keys
  const size_t rows = size_t(p.batch) * (p.kv.num_kv_heads > 0 ? p.kv.num_kv_heads : 1);
  plan.keys_offset = kWorkspaceCounterBytes;  // counters [batch][num_kv_heads] at the front
  plan.bytes = plan.keys_offset + AlignUp(rows * plan.key_stride * sizeof(uint32_t));
  return plan;
}

// Order-preserving map of fp32 to uint32 (larger float -> larger key); -0 is folded into +0 so
// equal scores are equal keys, as the CPU's float comparison sees them.
__device__ __forceinline__ uint32_t OrderedKey(float f) {
  if (f == 0.0f) f = 0.0f;
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// hist[bin] += 1 for the active lanes. When the warp's active lanes share one bin (clustered
// scores) one lane adds the count: same-address shared atomics would serialise 32-way. Called
// by all 32 lanes.
__device__ __forceinline__ void WarpHistAdd(uint32_t* hist, uint32_t bin, bool active) {
  const uint32_t act = __ballot_sync(0xffffffffu, active);
  if (act == 0) return;
  const int leader = __ffs(act) - 1;
  const uint32_t lead_bin = __shfl_sync(0xffffffffu, bin, leader);
  if (__all_sync(0xffffffffu, !active || bin == lead_bin)) {
    if (int(threadIdx.x % 32) == leader) atomicAdd(&hist[lead_bin], uint32_t(__popc(act)));
  } else if (active) {
    atomicAdd(&hist[bin], 1u);
  }
}

// Appends the active lanes' values to list[*count ...]; one atomic per warp. All 32 lanes call.
__device__ __forceinline__ void WarpAppend(uint32_t* list, uint32_t* count, uint32_t v,
                                           bool active) {
  const uint32_t act = __ballot_sync(0xffffffffu, active);
  const int lane = threadIdx.x % 32;
  uint32_t base = 0;
  if (lane == 0 && act != 0) base = atomicAdd(count, uint32_t(__popc(act)));
  base = __shfl_sync(0xffffffffu, base, 0);
  if (active) list[base + __popc(act & ((1u << lane) - 1u))] = v;
}

// Exclusive prefix sum over the CTA (512 threads); returns this thread's offset, *total the sum.
__device__ uint32_t BlockExclusiveScan(uint32_t v, uint32_t* total, uint32_t* s_warp) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  uint32_t x = v;
#pragma unroll
  for (int o = 1; o < 32; o *= 2) {
    const uint32_t y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  __syncthreads();  // s_warp may still be read by a previous scan
  if (lane == 31) s_warp[warp] = x;
  __syncthreads();
  if (warp == 0) {
    uint32_t w = lane < kSelWarps ? s_warp[lane] : 0u;
#pragma unroll
    for (int o = 1; o < 32; o *= 2) {
      const uint32_t y = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += y;
    }
    if (lane < kSelWarps) s_warp[lane] = w;  // inclusive warp totals
  }
  __syncthreads();
  *total = s_warp[kSelWarps - 1];
  return (warp > 0 ? s_warp[warp - 1] : 0u) + x - v;
}

template <int D>
__global__ void __launch_bounds__(kSelThreads) SelectKernel(const SelectArgs a) {
  extern __shared__ uint32_t s_keys[];  // [M] when keys_in_smem
  __shared__ float s_q[D];
  __shared__ uint32_t s_hist[kRadixBins];
  __shared__ uint32_t s_warp[kSelWarps];
  __shared__ uint32_t s_cand[kMaxCandidates];
  __shared__ uint32_t s_digit, s_above, s_ncand;
  __shared__ int s_last;

  const SelectBlocksParams& p = a.p;
  const int hkv = p.kv.num_kv_heads;
  const int b = blockIdx.z, h = blockIdx.y, chunk = blockIdx.x;
  const int tid = threadIdx.x;
  const int32_t num_keys = p.num_keys[b];
  const int32_t M = (num_keys + kPageTokens - 1) / kPageTokens;
  const int n_ctas = (M + kSelChunk - 1) / kSelChunk;
  if (M == 0) {
    if (chunk == 0 && h == 0 && tid == 0) p.num_blocks[b] = 0;
    return;
  }
  if (chunk >= n_ctas) return;
  const int32_t* table = p.page_tables + size_t(b) * p.page_table_stride;
  const size_t summary_stride = size_t(2) * D;

  // 1. The current token: K/V into its slot, key folded into the page summary.
  if (p.k_new != nullptr && chunk == (M - 1) / kSelChunk && tid < D) {
    const int32_t pos = num_keys - 1;
    const int32_t page = table[pos / kPageTokens];
    const int slot = pos % kPageTokens;
    const size_t src = (size_t(b) * hkv + h) * D + tid;
    const size_t dst = ((size_t(page) * hkv + h) * kPageTokens + slot) * D + tid;
    const __nv_bfloat16 k = p.k_new[src];
    p.kv.k[dst] = k;
    p.kv.v[dst] = p.v_new[src];
    __nv_bfloat16* sm = p.kv.summary + (size_t(page) * hkv + h) * summary_stride;
    if (slot == 0) {
      sm[tid] = k;
      sm[D + tid] = k;
    } else {
      const float kf = __bfloat162float(k);
      if (kf < __bfloat162float(sm[tid])) sm[tid] = k;
      if (kf > __bfloat162float(sm[D + tid])) sm[D + tid] = k;
    }
  }

  // 2. Pooled query: exact mean of the group's heads (sum, then one division).
  for (int d = tid; d < D; d += kSelThreads) {
    float sum = 0.0f;
    for (int j = 0; j < a.group; ++j) {
      sum += __bfloat162float(p.q[(size_t(b) * p.num_heads + h * a.group + j) * D + d]);
    }
    s_q[d] = sum / float(a.group);
  }
  __syncthreads();

  // 3. Scores: 4 lanes per block, lane part owns dims 8 part + 32 i + [0, 8).
  constexpr int KI = D / 32;
  const int warp = tid / 32, lane = tid % 32, sub = lane / 4, part = lane % 4;
  float qv[KI][8];
#pragma unroll
  for (int i = 0; i < KI; ++i) {
#pragma unroll
    for (int e = 0; e < 8; ++e) qv[i][e] = s_q[8 * part + 32 * i + e];
  }
  uint32_t* gkeys = a.keys + (size_t(b) * hkv + h) * a.key_stride;
  const int32_t end = min(M, (chunk + 1) * kSelChunk);
  for (int32_t base = chunk * kSelChunk + warp * 8; base < end; base += kSelWarps * 8) {
    const int32_t blk = base + sub;
    float acc = 0.0f;
    if (blk < end) {
      const __nv_bfloat16* sm =
          p.kv.summary + (size_t(table[blk]) * hkv + h) * summary_stride + 8 * part;
      uint4 mn[KI], mx[KI];
#pragma unroll
      for (int i = 0; i < KI; ++i) {
        mn[i] = detail::LoadStream(sm + 32 * i);
        mx[i] = detail::LoadStream(sm + D + 32 * i);
      }
#pragma unroll
      for (int i = 0; i < KI; ++i) {
        const uint32_t wn[4] = {mn[i].x, mn[i].y, mn[i].z, mn[i].w};
        const uint32_t wx[4] = {mx[i].x, mx[i].y, mx[i].z, mx[i].w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float q0 = qv[i][2 * e], q1 = qv[i][2 * e + 1];
          acc += fmaxf(q0 * detail::Bf16Lo(wx[e]), q0 * detail::Bf16Lo(wn[e]));
          acc += fmaxf(q1 * detail::Bf16Hi(wx[e]), q1 * detail::Bf16Hi(wn[e]));
        }
      }
    }
    acc = detail::QuadSum(acc);
    if (part == 0 && blk < end) gkeys[blk] = OrderedKey(blk == M - 1 ? INFINITY : acc);
  }

  // 4. Arrival: the last CTA of this (sequence, head) selects.
  __threadfence();
  __syncthreads();
  int* counter = a.counters + size_t(b) * hkv + h;
  if (tid == 0) s_last = atomicAdd(counter, 1) == n_ctas - 1;
  __syncthreads();
  if (!s_last) return;
  if (tid == 0) *counter = 0;
  __threadfence();

  const int32_t n = NumSelectedBlocksCuda(M, p.ratio, p.min_blocks);
  int32_t* out = p.blocks + (size_t(b) * hkv + h) * p.blocks_stride;
  if (h == 0 && tid == 0) p.num_blocks[b] = n;
  if (n >= M) {
    for (int32_t i = tid; i < M; i += kSelThreads) out[i] = i;
    return;
  }
  // 5. Block M - 1 (+inf) is always kept; pick `need` = n - 1 of the blocks [0, M - 1). Radix
  // select on v = key - min over the significant bits of (max - min), 11 bits per pass from the
  // top, so the first pass spreads over all bins however the scores cluster. Afterwards T is the
  // need-th largest key: `remaining` keys equal to T are kept after every key greater than T.
  // Keys are staged in shared memory (16-byte loads) while their min and max are taken.
  const int32_t mo = M - 1;
  const uint32_t need = uint32_t(n - 1);
  uint32_t kmin = 0xffffffffu, kmax = 0;
  for (int32_t i4 = tid; 4 * i4 < mo; i4 += kSelThreads) {
    uint4 k4 = __ldcg(reinterpret_cast<const uint4*>(gkeys) + i4);
    const uint32_t kk[4] = {k4.x, k4.y, k4.z, k4.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (4 * i4 + j < mo) kmin = min(kmin, kk[j]), kmax = max(kmax, kk[j]);
    }
    if (a.keys_in_smem) reinterpret_cast<uint4*>(s_keys)[i4] = k4;
  }
  const uint32_t* keys = a.keys_in_smem ? s_keys : gkeys;
  auto key_at = [&](int32_t i) { return a.keys_in_smem ? keys[i] : __ldcg(keys + i); };
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
    kmin = min(kmin, __shfl_xor_sync(0xffffffffu, kmin, o));
    kmax = max(kmax, __shfl_xor_sync(0xffffffffu, kmax, o));
  }
  if (tid == 0) s_digit = 0xffffffffu, s_above = 0;
  __syncthreads();
  if (lane == 0) atomicMin(&s_digit, kmin), atomicMax(&s_above, kmax);
  __syncthreads();
  kmin = s_digit;
  kmax = s_above;
  __syncthreads();
  const int top_bits = kmax > kmin ? 32 - __clz(kmax - kmin) : 0;

  uint32_t prefix = 0, mask = 0, remaining = need;
  bool use_cand = false;
  uint32_t ncand = 0;
#pragma unroll 1
  for (int hi = top_bits; hi > 0 && need > 0; hi -= 11) {
    const int lo = hi > 11 ? hi - 11 : 0;
    const int bins = 1 << (hi - lo);
    for (int i = tid; i < bins; i += kSelThreads) s_hist[i] = 0;
    __syncthreads();
    if (use_cand) {
      for (uint32_t base = warp * 32; base < ncand; base += kSelThreads) {
        const uint32_t i = base + lane;
        const uint32_t v = i < ncand ? s_cand[i] : 0u;
        WarpHistAdd(s_hist, (v >> lo) & (bins - 1), i < ncand && (v & mask) == prefix);
      }
    } else {  // 4 keys per lane per step: independent loads and votes in flight
      for (int32_t base = warp * 128; base < mo; base += kSelThreads * 4) {
        uint32_t v[4];
        bool ok[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int32_t i = base + 32 * j + lane;
          v[j] = i < mo ? key_at(i) - kmin : 0u;
          ok[j] = i < mo && (v[j] & mask) == prefix;
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) WarpHistAdd(s_hist, (v[j] >> lo) & (bins - 1), ok[j]);
      }
    }
    __syncthreads();
    // Thread t owns descending bin positions [t * per, (t + 1) * per).
    const int per = (bins + kSelThreads - 1) / kSelThreads;
    uint32_t local = 0;
    for (int j = 0; j < per; ++j) {
      const int pos = tid * per + j;
      if (pos < bins) local += s_hist[bins - 1 - pos];
    }
    uint32_t total;
    uint32_t above = BlockExclusiveScan(local, &total, s_warp);
    for (int j = 0; j < per; ++j) {
      const int pos = tid * per + j;
      if (pos >= bins) break;
      const uint32_t cnt = s_hist[bins - 1 - pos];
      if (above < remaining && remaining <= above + cnt) {
        s_digit = uint32_t(bins - 1 - pos);
        s_above = above;
      }
      above += cnt;
    }
    __syncthreads();
    remaining -= s_above;
    prefix |= s_digit << lo;
    mask |= uint32_t(bins - 1) << lo;
    if (!use_cand && lo > 0) {  // keep only the pivot bin's values when they fit
      ncand = s_hist[s_digit];
      if (ncand <= uint32_t(kMaxCandidates)) {
        if (tid == 0) s_ncand = 0;
        __syncthreads();
        for (int32_t base = warp * 128; base < mo; base += kSelThreads * 4) {
          uint32_t v[4];
          bool ok[4];
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const int32_t i = base + 32 * j + lane;
            v[j] = i < mo ? key_at(i) - kmin : 0u;
            ok[j] = i < mo && (v[j] & mask) == prefix;
          }
#pragma unroll
          for (int j = 0; j < 4; ++j) WarpAppend(s_cand, &s_ncand, v[j], ok[j]);
        }
        use_cand = true;
      }
    }
    __syncthreads();  // s_digit / s_above / s_hist / s_cand are rewritten next
  }
  const uint32_t T = kmin + prefix;

  // 6. Output in ascending block order: warp w owns a contiguous segment of [0, M - 1) and walks
  // it 32 keys at a time (conflict-free), ranks from ballots; block M - 1 goes last.
  const int32_t seg = ((mo + kSelWarps - 1) / kSelWarps + 127) / 128 * 128;
  const int32_t wlo = min(mo, warp * seg), whi = min(mo, wlo + seg);
  uint32_t gt = 0, eq = 0;
  for (int32_t base = wlo; base < whi; base += 128) {
    uint32_t k[4];
#pragma unroll
    for (int j = 0; j < 4; ++j)
      k[j] = base + 32 * j + lane < whi ? key_at(base + 32 * j + lane) : 0u;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const bool ok = base + 32 * j + lane < whi;
      gt += __popc(__ballot_sync(0xffffffffu, ok && k[j] > T));
      eq += __popc(__ballot_sync(0xffffffffu, ok && k[j] == T));
    }
  }
  __syncthreads();
  if (lane == 0) s_hist[warp] = gt, s_hist[kSelWarps + warp] = eq;
  __syncthreads();
  uint32_t pos = 0, tie_rank = 0;
  for (int w = 0; w < warp; ++w) pos += s_hist[w], tie_rank += s_hist[kSelWarps + w];
  pos += min(tie_rank, remaining);  // ties taken before this segment
  const uint32_t lt = (1u << lane) - 1u;
  for (int32_t base = wlo; base < whi; base += 128) {
    uint32_t k[4];
#pragma unroll
    for (int j = 0; j < 4; ++j)
      k[j] = base + 32 * j + lane < whi ? key_at(base + 32 * j + lane) : 0u;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int32_t i = base + 32 * j + lane;
      const bool is_eq = i < whi && k[j] == T;
      const uint32_t eq_mask = __ballot_sync(0xffffffffu, is_eq);
      const bool sel = need > 0 && ((i < whi && k[j] > T) ||
                                    (is_eq && tie_rank + __popc(eq_mask & lt) < remaining));
      const uint32_t sel_mask = __ballot_sync(0xffffffffu, sel);
      if (sel) out[pos + __popc(sel_mask & lt)] = i;
      pos += __popc(sel_mask);
      tie_rank += __popc(eq_mask);
    }
  }
  if (tid == 0) out[n - 1] = M - 1;
}

// Copies tokens' K/V rows into their page slots: one thread per 16-byte piece.
__global__ void WriteKvKernel(const WriteKvParams p) {
  const int s = blockIdx.y;
  const int D = p.kv.head_dim, hkv = p.kv.num_kv_heads, ch = D / 8;
  const int32_t t0 = p.token_offsets[s];
  const int32_t ntok = p.token_offsets[s + 1] - t0;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t tok = idx / (hkv * ch);
  if (tok >= ntok) return;
  const int h = int(idx / ch % hkv), c = int(idx % ch);
  const int32_t pos = p.first_pos[s] + int32_t(tok);
  const int32_t page = p.page_tables[size_t(s) * p.page_table_stride + pos / kPageTokens];
  const size_t dst = ((size_t(page) * hkv + h) * kPageTokens + pos % kPageTokens) * D + c * 8;
  const size_t src = ((size_t(t0) + tok) * hkv + h) * D + c * 8;
  *reinterpret_cast<uint4*>(p.kv.k + dst) = *reinterpret_cast<const uint4*>(p.k + src);
  *reinterpret_cast<uint4*>(p.kv.v + dst) = *reinterpret_cast<const uint4*>(p.v + src);
}

// Recomputes the summaries of the pages a run touched; one thread per dim.
__global__ void RecomputeSummaryKernel(const WriteKvParams p) {
  const int s = blockIdx.z, h = blockIdx.y;
  const int D = p.kv.head_dim, hkv = p.kv.num_kv_heads;
  const int32_t ntok = p.token_offsets[s + 1] - p.token_offsets[s];
  if (ntok <= 0) return;
  const int32_t first_blk = p.first_pos[s] / kPageTokens;
  const int32_t last_blk = (p.first_pos[s] + ntok - 1) / kPageTokens;
  const int32_t blk = first_blk + int32_t(blockIdx.x);
  if (blk > last_blk) return;
  const int valid = min(kPageTokens, p.num_keys[s] - blk * kPageTokens);
  const int32_t page = p.page_tables[size_t(s) * p.page_table_stride + blk];
  const __nv_bfloat16* kp = p.kv.k + (size_t(page) * hkv + h) * kPageTokens * D;
  __nv_bfloat16* sm = p.kv.summary + (size_t(page) * hkv + h) * 2 * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float mn = INFINITY, mx = -INFINITY;
    for (int t = 0; t < valid; ++t) {
      const float x = __bfloat162float(kp[size_t(t) * D + d]);
      mn = fminf(mn, x);
      mx = fmaxf(mx, x);
    }
    sm[d] = __float2bfloat16(mn);  // +-inf are exact in bf16
    sm[D + d] = __float2bfloat16(mx);
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

}  // namespace

size_t SelectBlocksWorkspaceBytes(const SelectBlocksParams& p) { return PlanSelect(p).bytes; }

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
  if (int64_t(p.batch) * p.kv.num_kv_heads > kWorkspaceCounters) {
    return absl::InvalidArgumentError(
        "SelectBlocksCuda: batch x num_kv_heads exceeds the counters");
  }
  a.keys = reinterpret_cast<uint32_t*>(static_cast<char*>(p.workspace) + plan.keys_offset);
  a.counters = static_cast<int*>(p.workspace);
  a.keys_in_smem = plan.max_blocks <= kMaxSmemKeys;
  const int smem = a.keys_in_smem ? int(plan.key_stride * sizeof(uint32_t)) : 0;
  const dim3 grid((plan.max_blocks + kSelChunk - 1) / kSelChunk, p.kv.num_kv_heads, p.batch);
  // The dynamic shared-memory limit is raised once per device to its largest use.
  constexpr int kMaxSmem = kMaxSmemKeys * int(sizeof(uint32_t));
  static std::atomic<uint64_t> attr_done[2];
  cudaError_t err;
  if (p.kv.head_dim == 64) {
    err = OncePerDevice(attr_done[0], [] {
      return cudaFuncSetAttribute(SelectKernel<64>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  kMaxSmem);
    });
    if (err == cudaSuccess) SelectKernel<64><<<grid, kSelThreads, smem, stream>>>(a);
  } else {
    err = OncePerDevice(attr_done[1], [] {
      return cudaFuncSetAttribute(SelectKernel<128>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  kMaxSmem);
    });
    if (err == cudaSuccess) SelectKernel<128><<<grid, kSelThreads, smem, stream>>>(a);
  }
  if (auto st = CudaStatus(err, "cudaFuncSetAttribute(SelectKernel)"); !st.ok()) return st;
  return CheckLaunch("SelectKernel");
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
  WriteKvKernel<<<dim3(unsigned((pieces + threads - 1) / threads), p.num_seqs), threads, 0,
                  stream>>>(p);
  if (auto st = CheckLaunch("WriteKvKernel"); !st.ok()) return st;
  const unsigned pages = unsigned((p.max_tokens + kPageTokens - 1) / kPageTokens + 1);
  RecomputeSummaryKernel<<<dim3(pages, p.kv.num_kv_heads, p.num_seqs), 128, 0, stream>>>(p);
  return CheckLaunch("RecomputeSummaryKernel");
}

}  // namespace resa::cuda
