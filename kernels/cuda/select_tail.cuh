// The selection's tail on the GPU: the exact top-n of one (sequence, KV head) row's block keys
// (order-preserving uint32 images of the scores), run by the row's last CTA of 512 threads in
// the fused selection kernels (selection.cu). Radix passes over key - min find the threshold
// T; the pivot bin's keys are compacted and narrowed until few enough to rank directly; the output
// is every block with key > T and the lowest-numbered blocks with key == T, in ascending order,
// without any sort. Two forms: the keys in registers (RegisterTail, <= kMaxRegKeys keys) or read
// from L2 / shared memory in loops (StridedTail). Costs and their split: docs/kernels.md.
#pragma once

#include <cstdint>

namespace resa::cuda::select_tail {

constexpr int kSelThreads = 512;  // the selection kernels' CTA; the tail needs all of it
constexpr int kSelWarps = kSelThreads / 32;
constexpr int kRegKeys = 32;                         // keys per thread in the register tail
constexpr int kMaxRegKeys = kSelThreads * kRegKeys;  // 16384: 256K tokens
constexpr int kMaxCandidates = 4096;  // keys of the pivot bin kept after the first pass
constexpr int kRadixBits = 11;        // digit of a pass over the keys
constexpr int kCandDigitBits = 8;     // digit of a pass over the compacted candidates
constexpr int kRadixBins = 1 << kRadixBits;
constexpr int kDirectRank = 128;  // candidates ranked by comparison instead of radix passes
static_assert(2 * kDirectRank <= kSelThreads && kDirectRank + 32 <= kMaxCandidates,
              "RankCandidates: two threads a candidate, list padded to a multiple of 32");

// Predicated stores, branch-free: written as plain `if`s, nvcc wraps each in a divergent branch
// with a convergence barrier (BSSY / BSYNC), which serialises the unrolled per-key code of the
// register tail (one key's whole latency chain at a time).
__device__ __forceinline__ void SharedStoreIf(uint32_t* p, uint32_t v, bool pred) {
  asm volatile("{\n .reg .pred q;\n setp.ne.u32 q, %2, 0;\n @q st.shared.u32 [%0], %1;\n}\n" ::"r"(
                   uint32_t(__cvta_generic_to_shared(p))),
               "r"(v), "r"(uint32_t(pred))
               : "memory");
}
__device__ __forceinline__ void GlobalStoreIf(int32_t* p, int32_t v, bool pred) {
  asm volatile(
      "{\n .reg .pred q;\n setp.ne.u32 q, %2, 0;\n @q st.global.s32 [%0], %1;\n}\n" ::"l"(p),
      "r"(v), "r"(uint32_t(pred))
      : "memory");
}

// hist[bin] += 1 for the active lanes. When the warp's active lanes share one bin (clustered
// scores) one lane adds the count: same-address shared atomics would serialise 32-way. Called
// by all 32 lanes; branch-free, so unrolled calls overlap: every lane issues one shared add, the
// lanes with nothing to add 0 to their own word of `spare` (ptxas turns a predicated atomic
// into a branch around it, with a convergence barrier).
__device__ __forceinline__ void WarpHistAdd(uint32_t* hist, uint32_t* spare, uint32_t bin,
                                            bool active) {
  const int lane = int(threadIdx.x % 32);
  const uint32_t act = __ballot_sync(0xffffffffu, active);
  const int leader = (__ffs(act) - 1) & 31;
  const uint32_t lead_bin = __shfl_sync(0xffffffffu, bin, leader);
  const bool uniform = __all_sync(0xffffffffu, !active || bin == lead_bin);
  const bool add = uniform ? lane == leader : active;  // act == 0: uniform, adds 0
  uint32_t* at = add ? hist + (uniform ? lead_bin : bin) : spare + lane;
  atomicAdd(at, add ? (uniform ? uint32_t(__popc(act)) : 1u) : 0u);
}

// Inclusive prefix sum over the warp's lanes. All 32 lanes call.
__device__ __forceinline__ uint32_t WarpInclusiveScan(uint32_t x) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int o = 1; o < 32; o *= 2) {
    const uint32_t y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  return x;
}

// Exclusive prefix sum over the CTA (512 threads); returns this thread's offset, *total the sum.
// One barrier: the caller orders it after any earlier scan's reads of s_warp (a barrier between
// the two) and must not write s_warp before every thread has returned. s_warp 16-byte aligned.
__device__ inline uint32_t BlockExclusiveScan(uint32_t v, uint32_t* total, uint32_t* s_warp) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const uint32_t x = WarpInclusiveScan(v);
  if (lane == 31) s_warp[warp] = x;
  __syncthreads();
  uint32_t before = 0, all = 0;
#pragma unroll
  for (int w4 = 0; w4 < kSelWarps / 4; ++w4) {
    const uint4 t = reinterpret_cast<const uint4*>(s_warp)[w4];
    const uint32_t tw[4] = {t.x, t.y, t.z, t.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      before += 4 * w4 + j < warp ? tw[j] : 0u;
      all += tw[j];
    }
  }
  *total = all;
  return before + x - v;
}

// Phases of the candidate tails, for their cost split (docs/kernels.md, "Fused selection"):
// CandidateTail's, and HistTail's in the same slots (count: its loads; pivot; compact; narrow:
// the rank; bitmaps: the kept masks; out_scan; stores). Built with RESA_SELECT_TAIL_STAMPS defined
// (CMake option of the same name), thread 0 reads its clock where each phase ends, at a CTA barrier
// or just after one, and adds the cycles since the last mark to g_tail_phase_cycles[phase] (one
// copy per translation unit: selection.cu reads its own, ReadSelectTailPhases); without it the
// marks compile to nothing.
enum TailPhase : int {
  kPhaseCount,    // the candidate count and flag words (from the tail's start)
  kPhaseScan,     // scan of the words' popcounts
  kPhaseIds,      // candidate ids into shared memory
  kPhaseGather,   // their keys from L2, and their range
  kPhaseHist,     // the first radix pass's histogram
  kPhasePivot,    // its pivot bin (FindPivotBin)
  kPhaseCompact,  // the pivot bin's keys compacted
  kPhaseNarrow,   // passes over the compacted candidates and the direct rank, to the threshold
  kPhaseBitmaps,  // bitmaps of keys above and at the threshold
  kPhaseOutScan,  // scan of their counts
  kPhaseStores,   // the ids stored (to a CTA barrier)
  kTailPhases
};
#ifdef RESA_SELECT_TAIL_STAMPS
namespace {
__device__ unsigned long long g_tail_phase_cycles[kTailPhases + 1];  // + tails counted
}  // namespace
#endif

// Shared state of the selection tail.
struct alignas(16) TailSmem {
  uint32_t hist[kRadixBins];
  uint32_t cand[kMaxCandidates];
  alignas(16) uint32_t warp[kSelWarps];  // BlockExclusiveScan reads it as uint4
  uint32_t spare[32];  // WarpHistAdd's no-op adds
  uint32_t digit, above, ncand, kmin, kmax;
  uint32_t hint_digit;  // FindPivotBin's bin of hint_rank (the next step's hint)
  uint32_t hint_total;  // CandidateTail / HistTail: the row's candidate count
  uint32_t pivot;       // FindPivotBin: the count in the pivot bin s.digit
#ifdef RESA_SELECT_TAIL_STAMPS
  long long clock_last;  // thread 0's clock at the last mark
#endif
};

// Phase clock: StartClock at the tail's start, then Mark(s, phase) where `phase` ends (thread 0
// acts; every thread may call them).
__device__ __forceinline__ void StartClock(TailSmem& s) {
#ifdef RESA_SELECT_TAIL_STAMPS
  if (threadIdx.x == 0) s.clock_last = clock64();
#else
  (void)s;
#endif
}
__device__ __forceinline__ void Mark(TailSmem& s, TailPhase phase) {
#ifdef RESA_SELECT_TAIL_STAMPS
  if (threadIdx.x == 0) {
    const long long t = clock64();
    atomicAdd(&g_tail_phase_cycles[phase], (unsigned long long)(t - s.clock_last));
    if (phase == kPhaseStores) atomicAdd(&g_tail_phase_cycles[kTailPhases], 1ull);
    s.clock_last = clock64();  // the atomics' issue is not the next phase's
  }
#else
  (void)s, (void)phase;
#endif
}

// Pivot search over one radix pass's counts, `bins` bins a power of two <= 2048: thread t holds
// the counts of descending bin positions [t * per, (t + 1) * per), per = bins / 512 rounded up
// (c[j]: bin bins - 1 - t * per - j; unused slots 0). The bin holding the remaining-th largest
// value goes to s.digit, its count to s.pivot and the count above it to s.above; when hint_rank >
// 0, the bin holding the hint_rank-th largest goes to s.hint_digit (left as it was when there are
// fewer values). With top_total > 0 the top bin's count (thread 0's c[0], passed as 0) is taken
// as top_total less the other bins' sum (HistTail, whose scoring CTAs do not count it). Ends
// synchronised.
__device__ inline void PivotFromCounts(TailSmem& s, uint32_t (&c)[4], int bins, uint32_t remaining,
                                       uint32_t hint_rank = 0, uint32_t top_total = 0) {
  const int tid = threadIdx.x;
  const int per = (bins + kSelThreads - 1) / kSelThreads;
  uint32_t total;
  uint32_t above = BlockExclusiveScan((c[0] + c[1]) + (c[2] + c[3]), &total, s.warp);
  if (top_total > 0) {
    const uint32_t top = top_total - total;
    if (tid == 0) {
      c[0] = top;
    } else {
      above += top;
    }
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int pos = tid * per + j;
    if (j < per && pos < bins) {
      if (above < remaining && remaining <= above + c[j]) {
        s.digit = uint32_t(bins - 1 - pos);
        s.above = above;
        s.pivot = c[j];
      }
      if (above < hint_rank && hint_rank <= above + c[j]) s.hint_digit = uint32_t(bins - 1 - pos);
      above += c[j];
    }
  }
  __syncthreads();
}

// After s.hist holds the counts of one radix pass over `bins` bins: PivotFromCounts over them.
__device__ inline void FindPivotBin(TailSmem& s, int bins, uint32_t remaining,
                                    uint32_t hint_rank = 0) {
  static_assert(kRadixBins <= 4 * kSelThreads, "FindPivotBin: at most 4 bins a thread");
  const int tid = threadIdx.x;
  // Thread t owns descending bin positions [t * per, (t + 1) * per), per <= 4 (bins a power of
  // two), their counts read once into registers: 2048 bins as one 16-byte load a thread
  // (conflict-free; four 4-byte loads at a stride of four words were 4-way bank conflicts).
  const int per = (bins + kSelThreads - 1) / kSelThreads;
  uint32_t c[4];
  if (per == 4) {
    const uint4 h = reinterpret_cast<const uint4*>(s.hist)[bins / 4 - 1 - tid];
    c[0] = h.w, c[1] = h.z, c[2] = h.y, c[3] = h.x;
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int pos = tid * per + j;
      c[j] = j < per && pos < bins ? s.hist[bins - 1 - pos] : 0u;
    }
  }
  PivotFromCounts(s, c, bins, remaining, hint_rank);
}

// Exact rank among the ncand <= kSelThreads / 2 compacted candidates (all in the current pivot
// bin): the remaining-th largest value goes to s.digit, the count of larger candidates to
// s.above. Two adjacent lanes rank a candidate, each against every other 16-byte group of the
// list (zero-padded to a multiple of 32: a pad counts only as equal to a candidate of value 0,
// which subtracts them), four loads in flight and four independent sums, so the loop is ~n / 8
// short rounds instead of one chain of n compares a thread (which took ~8700 cycles for the ~200
// candidates of a real decode step: docs/kernels.md). Called by all threads; ends synchronised.
__device__ inline void RankCandidates(TailSmem& s, uint32_t ncand, uint32_t remaining) {
  const uint32_t t = threadIdx.x;
  const uint32_t padded = (ncand + 31) & ~31u;
  if (t < padded - ncand) s.cand[ncand + t] = 0u;
  __syncthreads();
  const uint32_t i = t / 2, half = t % 2;
  const uint32_t c = i < ncand ? s.cand[i] : 0u;
  uint32_t gt = 0, eq = 0;
  if (i < ncand) {
    const uint4* x4 = reinterpret_cast<const uint4*>(s.cand) + half;
    uint32_t g[4] = {0, 0, 0, 0}, e[4] = {0, 0, 0, 0};
    for (uint32_t k = 0; k < padded / 8; k += 4) {  // this lane's groups: 2k + half, ...
      uint4 x[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) x[u] = x4[2 * (k + u)];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        g[u] += uint32_t(x[u].x > c) + uint32_t(x[u].y > c) + uint32_t(x[u].z > c) +
                uint32_t(x[u].w > c);
        e[u] += uint32_t(x[u].x == c) + uint32_t(x[u].y == c) + uint32_t(x[u].z == c) +
                uint32_t(x[u].w == c);
      }
    }
    gt = (g[0] + g[1]) + (g[2] + g[3]);
    eq = (e[0] + e[1]) + (e[2] + e[3]);
  }
  gt += __shfl_xor_sync(0xffffffffu, gt, 1);
  eq += __shfl_xor_sync(0xffffffffu, eq, 1);
  if (c == 0) eq -= padded - ncand;
  // Every holder of the threshold value writes the same.
  if (i < ncand && half == 0 && gt < remaining && remaining <= gt + eq) {
    s.digit = c;
    s.above = gt;
  }
  __syncthreads();
}

// Selection over keys v = key - kmin of blocks [0, mo). Returns T - kmin, the value of the
// need-th largest; *remaining becomes the number of keys equal to T to keep (lowest blocks
// first), after every key above T. Passes over the keys take 11-bit digits until the pivot bin
// holds at most kMaxCandidates keys, which are then compacted into s.cand; passes over those
// take 8-bit digits, and once the pivot bin holds at most kDirectRank keys one warp moves them
// to the front of s.cand (in order, in place) and RankCandidates ranks them. FOR_KEYS(fn) calls
// fn(v, valid) for every key of this thread and must be called by all 32 lanes of every warp in
// lockstep (warp collectives inside fn). When hint_rank > 0, *hint_out becomes the lower edge (v)
// of the first pass's bin holding the hint_rank-th largest key, so at least hint_rank keys are >=
// kmin + *hint_out (0 when there are fewer keys): the next decode step's hint (CandidateTail). With
// `marks`, the phase clock's marks kPhaseHist to kPhaseNarrow.
template <typename ForKeys>
__device__ inline uint32_t RadixSelect(TailSmem& s, uint32_t need, uint32_t* remaining_out,
                                       ForKeys for_keys, uint32_t hint_rank = 0,
                                       uint32_t* hint_out = nullptr, bool marks = false) {
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const uint32_t kmin = s.kmin, kmax = s.kmax;
  const int top_bits = kmax > kmin ? 32 - __clz(kmax - kmin) : 0;
  uint32_t prefix = 0, mask = 0, remaining = need;
  if (hint_out != nullptr) *hint_out = 0;
  if (tid == 0) s.hint_digit = 0;  // read after the first pass's barriers
  bool use_cand = false;
  uint32_t ncand = 0;
  int hi = top_bits;
#pragma unroll 1
  while (hi > 0) {
    // Passes over the compacted candidates take narrower digits: a 256-bin histogram is cheap to
    // scan, and the pivot bin it leaves is small enough to rank directly.
    const int lo = max(hi - (use_cand ? kCandDigitBits : kRadixBits), 0);
    const int bins = 1 << (hi - lo);
    // s.hist is zero here: cleared by the caller before the first pass, after the others below.
    if (use_cand) {
      for (uint32_t base = warp * 32; base < ncand; base += kSelThreads) {
        const uint32_t i = base + lane;
        const uint32_t v = i < ncand ? s.cand[i] : 0u;
        WarpHistAdd(s.hist, s.spare, (v >> lo) & (bins - 1), (i < ncand) & ((v & mask) == prefix));
      }
    } else {
      for_keys([&](uint32_t v, bool ok) {
        WarpHistAdd(s.hist, s.spare, (v >> lo) & (bins - 1), ok & ((v & mask) == prefix));
      });
    }
    __syncthreads();
    const bool first_pass = hi == top_bits;
    if (marks && first_pass) Mark(s, kPhaseHist);
    FindPivotBin(s, bins, remaining, first_pass ? hint_rank : 0u);
    if (marks && first_pass) Mark(s, kPhasePivot);
    if (first_pass && hint_out != nullptr) *hint_out = s.hint_digit << lo;
    const uint32_t digit = s.digit;
    const uint32_t pivot = s.hist[digit];  // values in the pivot bin
    remaining -= s.above;
    prefix |= digit << lo;
    mask |= uint32_t(bins - 1) << lo;
    __syncthreads();  // s.hist / s.digit / s.above are rewritten next
    if (lo == 0) break;
    for (int i = tid; i < bins; i += kSelThreads) s.hist[i] = 0;
    if (!use_cand && pivot <= uint32_t(kMaxCandidates)) {  // keep only the pivot bin's values
      // Two sweeps: count this lane's matches, then one atomic per warp and plain stores.
      uint32_t mine = 0;
      for_keys([&](uint32_t v, bool ok) { mine += uint32_t(ok & ((v & mask) == prefix)); });
      const uint32_t incl = WarpInclusiveScan(mine);
      uint32_t base = 0;
      if (lane == 31 && incl != 0) base = atomicAdd(&s.ncand, incl);
      uint32_t at = __shfl_sync(0xffffffffu, base, 31) + incl - mine;
      for_keys([&](uint32_t v, bool ok) {
        const bool keep = ok & ((v & mask) == prefix);
        SharedStoreIf(s.cand + at, v, keep);
        at += uint32_t(keep);
      });
      use_cand = true;
      ncand = pivot;
    } else if (use_cand && pivot <= uint32_t(kDirectRank)) {
      // Warp 0 compacts the pivot bin's candidates in place, in order (each chunk of 32 is read
      // before any of it is overwritten; writes land below the chunk's end).
      if (warp == 0) {
        uint32_t kept = 0;
        for (uint32_t base = 0; base < ncand; base += 32) {
          const uint32_t i = base + lane;
          const uint32_t v = i < ncand ? s.cand[i] : 0u;
          const bool keep = (i < ncand) & ((v & mask) == prefix);
          const uint32_t ballot = __ballot_sync(0xffffffffu, keep);
          __syncwarp();
          SharedStoreIf(s.cand + kept + __popc(ballot & ((1u << lane) - 1u)), v, keep);
          kept += uint32_t(__popc(ballot));
        }
      }
      ncand = pivot;
    } else {
      __syncthreads();
      hi = lo;
      continue;
    }
    __syncthreads();
    if (marks && first_pass) Mark(s, kPhaseCompact);
    if (ncand <= uint32_t(kDirectRank)) {
      RankCandidates(s, ncand, remaining);
      prefix = s.digit;
      remaining -= s.above;
      break;
    }
    hi = lo;
  }
  if (marks) Mark(s, kPhaseNarrow);
  *remaining_out = remaining;
  return prefix;
}

// CTA-wide range of the keys: kmin / kmax are this thread's partial minimum and maximum, folded
// over the warp (butterfly shuffles) and then into s.kmin / s.kmax (initialised to 0xffffffff / 0
// on entry); lane is threadIdx.x % 32. Called by all threads; returns s.kmin, with s.kmin / s.kmax
// final for every thread.
__device__ __forceinline__ uint32_t BlockKeyRange(TailSmem& s, int lane, uint32_t kmin,
                                                  uint32_t kmax) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
    kmin = min(kmin, __shfl_xor_sync(0xffffffffu, kmin, o));
    kmax = max(kmax, __shfl_xor_sync(0xffffffffu, kmax, o));
  }
  __syncthreads();
  if (lane == 0) atomicMin(&s.kmin, kmin), atomicMax(&s.kmax, kmax);
  __syncthreads();
  return s.kmin;
}

// Selection of need = n - 1 of the keys of blocks [0, mo) (block M - 1 is already placed at
// out[n - 1]), keys read from L2 or, when s_keys is non-null, staged there first (16-byte loads,
// during the min/max sweep). Output in ascending block order: warp w owns a contiguous segment of
// [0, mo) and walks it 32 keys at a time (conflict-free), ranks from ballots. s.hist is zero and
// s.kmin / s.kmax / s.ncand are initialised on entry.
__device__ inline void StridedTail(TailSmem& s, const uint32_t* gkeys, uint32_t* s_keys, int32_t mo,
                                   uint32_t need, int32_t* out) {
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const uint32_t lt = (1u << lane) - 1u;
  uint32_t kmin = 0xffffffffu, kmax = 0;
  for (int32_t i4 = tid; 4 * i4 < mo; i4 += kSelThreads) {
    const uint4 k4 = __ldcg(reinterpret_cast<const uint4*>(gkeys) + i4);
    if (s_keys != nullptr) reinterpret_cast<uint4*>(s_keys)[i4] = k4;
    const uint32_t kk[4] = {k4.x, k4.y, k4.z, k4.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (4 * i4 + j < mo) kmin = min(kmin, kk[j]), kmax = max(kmax, kk[j]);
    }
  }
  kmin = BlockKeyRange(s, lane, kmin, kmax);
  auto key_at = [&](int32_t i) { return s_keys != nullptr ? s_keys[i] : __ldcg(gkeys + i); };
  auto for_keys = [&](auto fn) {
    for (int32_t base = warp * 128; base < mo; base += kSelThreads * 4) {
      uint32_t v[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int32_t i = base + 32 * j + lane;
        v[j] = i < mo ? key_at(i) - kmin : 0u;
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) fn(v[j], base + 32 * j + lane < mo);
    }
  };
  uint32_t remaining;
  const uint32_t T = kmin + RadixSelect(s, need, &remaining, for_keys);

  const int32_t seg = ((mo + kSelWarps - 1) / kSelWarps + 127) / 128 * 128;
  const int32_t wlo = min(mo, warp * seg), whi = min(mo, wlo + seg);
  // Keys base + 32 j + lane of this warp's segment [wlo, whi), 0 past its end.
  auto segment_keys = [&](int32_t base, uint32_t(&k)[4]) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      k[j] = base + 32 * j + lane < whi ? key_at(base + 32 * j + lane) : 0u;
    }
  };
  uint32_t gt = 0, eq = 0;
  for (int32_t base = wlo; base < whi; base += 128) {
    uint32_t k[4];
    segment_keys(base, k);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const bool ok = base + 32 * j + lane < whi;
      gt += __popc(__ballot_sync(0xffffffffu, ok && k[j] > T));
      eq += __popc(__ballot_sync(0xffffffffu, ok && k[j] == T));
    }
  }
  __syncthreads();
  if (lane == 0) s.hist[warp] = gt, s.hist[kSelWarps + warp] = eq;
  __syncthreads();
  uint32_t pos = 0, tie_rank = 0;
  for (int w = 0; w < warp; ++w) pos += s.hist[w], tie_rank += s.hist[kSelWarps + w];
  pos += min(tie_rank, remaining);  // ties taken before this segment
  for (int32_t base = wlo; base < whi; base += 128) {
    uint32_t k[4];
    segment_keys(base, k);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int32_t i = base + 32 * j + lane;
      const bool is_eq = i < whi && k[j] == T;
      const uint32_t eq_mask = __ballot_sync(0xffffffffu, is_eq);
      const bool sel =
          (i < whi && k[j] > T) || (is_eq && tie_rank + __popc(eq_mask & lt) < remaining);
      const uint32_t sel_mask = __ballot_sync(0xffffffffu, sel);
      if (sel) out[pos + __popc(sel_mask & lt)] = i;
      pos += __popc(sel_mask);
      tie_rank += __popc(eq_mask);
    }
  }
}

// The same selection for mo <= kMaxRegKeys with the keys in registers. Warp w owns the segment
// [w seg, (w + 1) seg), seg = mo / 16 rounded up to 128, so every warp holds a share of the keys
// whatever the length (a short row costs a few slots per thread, not 32 on two warps); slot q
// holds keys w seg + 128 q + 4 lane + [0, 4) (coalesced 16-byte loads). Slots past seg are
// skipped CTA-uniformly.
// hint_rank / hint_out as in RadixSelect (*hint_out a key, not key - min); *t_out, when given,
// the threshold key T.
__device__ __forceinline__ void RegisterTail(TailSmem& s, const uint32_t* gkeys, int32_t mo,
                                             uint32_t need, int32_t* out, uint32_t hint_rank = 0,
                                             uint32_t* hint_out = nullptr,
                                             uint32_t* t_out = nullptr) {
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int32_t seg = ((mo + kSelWarps - 1) / kSelWarps + 127) / 128 * 128;
  const int32_t wbase = warp * seg;
  uint32_t kr[kRegKeys / 4][4];
#pragma unroll
  for (int q = 0; q < kRegKeys / 4; ++q) {
    const int32_t i0 = wbase + 128 * q + 4 * lane;
    uint4 k4 = make_uint4(0, 0, 0, 0);
    if (128 * q < seg && i0 < mo) k4 = __ldcg(reinterpret_cast<const uint4*>(gkeys + i0));
    kr[q][0] = k4.x, kr[q][1] = k4.y, kr[q][2] = k4.z, kr[q][3] = k4.w;
  }
  uint32_t kmin = 0xffffffffu, kmax = 0;
#pragma unroll
  for (int q = 0; q < kRegKeys / 4; ++q) {
    if (128 * q >= seg) break;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (wbase + 128 * q + 4 * lane + e < mo)
        kmin = min(kmin, kr[q][e]), kmax = max(kmax, kr[q][e]);
    }
  }
  kmin = BlockKeyRange(s, lane, kmin, kmax);
  auto for_keys = [&](auto fn) {
#pragma unroll
    for (int q = 0; q < kRegKeys / 4; ++q) {
      if (128 * q >= seg) break;  // CTA-uniform
#pragma unroll
      for (int e = 0; e < 4; ++e) fn(kr[q][e] - kmin, wbase + 128 * q + 4 * lane + e < mo);
    }
  };
  uint32_t remaining, hint_v;
  const uint32_t T = kmin + RadixSelect(s, need, &remaining, for_keys, hint_rank, &hint_v);
  if (hint_out != nullptr) *hint_out = kmin + hint_v;
  if (t_out != nullptr) *t_out = T;

  // Ascending output: packed (greater << 16 | equal) counts, prefix-summed in block order
  // (warp, slot, lane, element); counts <= 16384 fit 16 bits.
  uint32_t inc[kRegKeys / 4], wtot = 0;
#pragma unroll
  for (int q = 0; q < kRegKeys / 4; ++q) {
    if (128 * q >= seg) break;
    uint32_t c = 0;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const bool ok = wbase + 128 * q + 4 * lane + e < mo;
      c += (uint32_t(ok & (kr[q][e] > T)) << 16) | uint32_t(ok & (kr[q][e] == T));
    }
    inc[q] = WarpInclusiveScan(c) - c + wtot;  // exclusive, within this warp's segment
    wtot += __shfl_sync(0xffffffffu, inc[q] + c - wtot, 31);
  }
  if (lane == 0) s.warp[warp] = wtot;
  __syncthreads();
  uint32_t before = 0;
  for (int w = 0; w < warp; ++w) before += s.warp[w];
#pragma unroll
  for (int q = 0; q < kRegKeys / 4; ++q) {
    if (128 * q >= seg) break;
    const uint32_t x = before + inc[q];
    uint32_t tie = x & 0xffffu;
    uint32_t pos = (x >> 16) + min(tie, remaining);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int32_t i = wbase + 128 * q + 4 * lane + e;
      const bool ok = i < mo, eq = ok & (kr[q][e] == T);
      const bool take = (ok & (kr[q][e] > T)) | (eq & (tie < remaining));
      GlobalStoreIf(out + pos, i, take);
      pos += uint32_t(take);
      tie += uint32_t(eq);
    }
  }
}

// The position of the r-th lowest set bit of m (r < popc(m)): five halving steps, no loop.
__device__ __forceinline__ uint32_t NthSetBit(uint32_t m, uint32_t r) {
  uint32_t pos = 0;
#pragma unroll
  for (uint32_t width = 16; width > 0; width /= 2) {
    const uint32_t low = m & ((1u << width) - 1u);
    const uint32_t c = uint32_t(__popc(low));
    const bool up = r >= c;
    r -= up ? c : 0u;
    pos += up ? width : 0u;
    m = up ? m >> width : low;
  }
  return pos;
}

// The ordered output of the candidate tails: thread t's word t of blocks (32 t + i) has the kept
// bits gt (key > T) and eq (key == T); after the packed (greater, equal) counts of the words
// before it (one CTA scan; s.warp free of earlier reads behind a barrier), it keeps the blocks of
// gt and those of eq among the row's first `remaining` ties (in block order), and writes them in
// block order: two a step, its lowest left bit forward and its highest backward, so a word of k
// kept blocks takes ceil(k / 2) short steps. (One bit a step with the tie test in the loop took
// about 1,440 cycles a row at 1.5B 256K; a binary search over the words' staged positions for every
// output position, 2,180: docs/kernels.md, run 54.)
__device__ __forceinline__ void StoreKeptWords(TailSmem& s, uint32_t gt, uint32_t eq,
                                               uint32_t remaining, int32_t* out) {
  const int tid = threadIdx.x;
  uint32_t unused;
  const uint32_t x =
      BlockExclusiveScan((uint32_t(__popc(gt)) << 16) | uint32_t(__popc(eq)), &unused, s.warp);
  Mark(s, kPhaseOutScan);
  // This word keeps its first min(popc(eq), remaining - ties before it) keys equal to T.
  const uint32_t tie = x & 0xffffu;
  const uint32_t take = remaining > tie ? remaining - tie : 0u;
  uint32_t kept = gt;
  if (eq != 0 && take > 0) {
    kept |= take >= uint32_t(__popc(eq)) ? eq : eq & ((1u << NthSetBit(eq, take)) - 1u);
  }
  int32_t* fwd = out + (x >> 16) + min(tie, remaining);
  int32_t* back = fwd + __popc(kept) - 1;
  const int32_t base = 32 * tid;
  for (uint32_t w = kept; w != 0;) {
    const int lo = __ffs(w) - 1, hi = 31 - __clz(w);  // lo == hi: both store the same slot
    *fwd++ = base + lo;
    *back-- = base + hi;
    w &= ~((1u << lo) | (1u << hi));
  }
#ifdef RESA_SELECT_TAIL_STAMPS
  __syncthreads();  // the stores issued by every thread
#endif
  Mark(s, kPhaseStores);
}

// Candidates of the hinted tail: keys >= the row's hint, at most kCandRegs a thread.
constexpr int kCandRegs = 8;
constexpr int kMaxHintCandidates = kSelThreads * kCandRegs;  // 4096

// The selection of need of the keys of blocks [0, mo), mo <= kMaxRegKeys, from the candidates
// only: the blocks whose key is >= the row's hint key, flagged by the scoring CTAs in `bits`
// (bit i of word w: block 32 w + i; no other bits set) and counted in *count (reset here).
// When there are at least `need` of them, the need-th largest key T is >= the hint key, so
// every block with key >= T is a candidate and the output (every key > T, the lowest-numbered
// keys == T, ascending) is exactly RegisterTail's. Returns false, having changed nothing but
// *count and s.hint_total, when there are fewer than need or more than kMaxHintCandidates
// candidates (the caller runs RegisterTail instead). Otherwise *hint_out and *t_out as in
// RegisterTail.
// Cost: the count and the flag words (one a thread, loaded together), the candidates' block
// ids compacted in s.cand, their keys gathered from L2 (candidates t + 512 k of thread t, all
// loads in flight), RadixSelect over those, then bitmaps of (key > T) and (key == T) in s.hist,
// one word a thread, and one CTA-wide scan of their packed counts for the ordered output: no
// sweep over all mo keys. (Each thread taking 8 consecutive candidates instead, so the output
// needs no bitmaps, measured 0.5-1% slower e2e at 256K batch 1: docs/kernels.md.) s.hist zero
// and s.kmin / s.kmax / s.ncand initialised on entry.
__device__ inline bool CandidateTail(TailSmem& s, const uint32_t* gkeys, const uint32_t* bits,
                                     uint32_t* count, int32_t mo, uint32_t need, int32_t* out,
                                     uint32_t hint_rank, uint32_t* hint_out,
                                     uint32_t* t_out = nullptr) {
  const int tid = threadIdx.x, lane = tid % 32;
  StartClock(s);
  const int words = (mo + 31) / 32;                             // <= kSelThreads
  const uint32_t word = tid < words ? __ldcg(bits + tid) : 0u;  // in flight with the count
  if (tid == 0) {
    s.hint_total = __ldcg(count);
    *count = 0;  // ready for the next launch
  }
  __syncthreads();
  if (s.hint_total < need || s.hint_total > uint32_t(kMaxHintCandidates)) return false;
  Mark(s, kPhaseCount);
  uint32_t total;
  uint32_t at = BlockExclusiveScan(uint32_t(__popc(word)), &total, s.warp);
  Mark(s, kPhaseScan);
  if (total != s.hint_total) return false;  // never (same ballots); keeps s.cand in bounds
  for (uint32_t w = word; w != 0; w &= w - 1) s.cand[at++] = 32 * tid + __ffs(w) - 1;
  __syncthreads();
  Mark(s, kPhaseIds);
  uint32_t key[kCandRegs], id[kCandRegs];
#pragma unroll
  for (int k = 0; k < kCandRegs; ++k) {
    const uint32_t i = tid + kSelThreads * k;
    id[k] = i < total ? s.cand[i] : 0u;
  }
#pragma unroll
  for (int k = 0; k < kCandRegs; ++k) {
    key[k] = tid + kSelThreads * k < total ? __ldcg(gkeys + id[k]) : 0u;
  }
  uint32_t kmin = 0xffffffffu, kmax = 0;
#pragma unroll
  for (int k = 0; k < kCandRegs; ++k) {
    if (tid + kSelThreads * k < total) kmin = min(kmin, key[k]), kmax = max(kmax, key[k]);
  }
  kmin = BlockKeyRange(s, lane, kmin, kmax);  // starts with a barrier: s.cand is free after it
  Mark(s, kPhaseGather);
  auto for_keys = [&](auto fn) {
#pragma unroll
    for (int k = 0; k < kCandRegs; ++k) {
      if (uint32_t(kSelThreads * k) >= total) break;  // CTA-uniform: no thread has slot k
      fn(key[k] - kmin, tid + kSelThreads * k < total);
    }
  };
  uint32_t remaining, hint_v;
  const uint32_t T = kmin + RadixSelect(s, need, &remaining, for_keys, hint_rank, &hint_v, true);
  *hint_out = kmin + hint_v;
  if (t_out != nullptr) *t_out = T;

  // Bitmaps: s.hist[w] bit i = key of block 32 w + i > T, s.hist[kSelThreads + w] = key == T.
  static_assert(2 * kSelThreads <= kRadixBins, "two bitmap words a thread in s.hist");
  s.hist[tid] = 0;
  s.hist[kSelThreads + tid] = 0;
  __syncthreads();
#pragma unroll
  for (int k = 0; k < kCandRegs; ++k) {
    if (uint32_t(kSelThreads * k) >= total) break;
    const bool ok = tid + kSelThreads * k < total;
    if (ok && key[k] >= T) {
      atomicOr(&s.hist[(key[k] > T ? 0 : kSelThreads) + id[k] / 32], 1u << (id[k] % 32));
    }
  }
  __syncthreads();
  Mark(s, kPhaseBitmaps);
  // Ascending output: thread t writes the blocks of word t, after the packed (greater, equal)
  // counts of the words before it.
  const uint32_t gt = s.hist[tid], eq = s.hist[kSelThreads + tid];
  StoreKeptWords(s, gt, eq, remaining, out);
  return true;
}

// The histogram tail: the same selection as CandidateTail from the same candidates, with the
// first radix pass done by the scoring CTAs. Each scoring CTA adds every candidate it flags to
// the row's global histogram of kRadixBins bins, bin HistBin(key, hint, shift) (fixed before the
// scores are known: bins of 2^shift keys upward from the hint key), except the top bin, which
// would collect most candidates at one address and is taken as the count less the others. The
// shift comes with the hint from the previous step (NextHistShift), so that its threshold lay
// about 256-511 bins above its hint: the pivot bin then holds a few keys, and often exactly as
// many as are still needed, which needs no rank at all.
__device__ __forceinline__ uint32_t HistBin(uint32_t key, uint32_t hint, uint32_t shift) {
  return min((key - hint) >> shift, uint32_t(kRadixBins - 1));
}
constexpr uint32_t kHistShiftMask = 31;  // a shift takes the low 5 bits of the stored hint

// The shift for the next step's histogram from this step's threshold key t and next hint key:
// t - hint spans 256-511 bins of 2^shift keys (fewer when it is below 256 keys).
__device__ __forceinline__ uint32_t NextHistShift(uint32_t t, uint32_t hint) {
  const int bits = 32 - __clz(t > hint ? t - hint : 0u);  // __clz(0) = 32
  return uint32_t(max(bits - 9, 0));
}

enum class HistOutcome {
  kDone,          // selected; *count reset
  kDeclined,      // the histogram cannot place the threshold: CandidateTail can (count kept)
  kNoCandidates,  // fewer than need or more than kMaxHintCandidates candidates; *count reset
};

// The hinted selection from the scoring CTAs' histogram `hist` (kRadixBins counts, the top bin
// not counted; zeroed here for the next launch whatever the outcome), with the candidates flagged
// in `bits` and counted in *count as for CandidateTail, and the same output, *hint_out and *t_out
// (the threshold key, or when every key of the pivot bin is kept the bin's lower edge). Thread t
// loads its flag word, its 4 histogram bins and the keys of its word's candidates (16 bytes a
// nibble with a candidate) at once; while those keys arrive the CTA finds the pivot bin over the
// histogram (one scan). Every key of the bins above it is kept; the pivot bin's keys are kept
// whole when their count is what is still needed, or else compacted and ranked directly
// (RankCandidates, at most kDirectRank of them). Bin membership is a key compare with the bin's
// edges, which no key below the hint passes. The output needs one more scan: each thread writes
// the kept blocks of its own word, in order. Declines (kDeclined) when the pivot bin is the top
// one (the threshold lies past the bins) or holds more than kDirectRank keys; s.hist zero and
// s.kmin / s.kmax / s.ncand initialised on entry, and so left when it declines (s.cand aside).
// (Whole 128-byte lines of keys a warp instruction, a ballot a line for the words' kept bits and
// the ids staged in shared memory measured slower: docs/kernels.md, run 53.)
__device__ inline HistOutcome HistTail(TailSmem& s, const uint32_t* gkeys, const uint32_t* bits,
                                       uint32_t* count, uint32_t* hist, int32_t mo, uint32_t need,
                                       int32_t* out, uint32_t hint, uint32_t shift,
                                       uint32_t hint_rank, uint32_t* hint_out, uint32_t* t_out) {
  static_assert(kRadixBins == 4 * kSelThreads, "HistTail: one 16-byte group of bins a thread");
  const int tid = threadIdx.x, lane = tid % 32;
  const int words = (mo + 31) / 32;  // <= kSelThreads
  StartClock(s);
  uint4* bins4 = reinterpret_cast<uint4*>(hist) + (kRadixBins / 4 - 1 - tid);
  const uint4 h = __ldcg(bins4);
  const uint32_t word = tid < words ? __ldcg(bits + tid) : 0u;
  if (tid == 0) {
    s.hint_total = __ldcg(count);
    s.hint_digit = 0;
  }
  __stcg(bins4, make_uint4(0u, 0u, 0u, 0u));  // ready for the next launch
  // The keys of this word's candidates (16-byte groups of the 16-byte aligned row; the keys of
  // a loaded group that are not candidates are below the hint, those not loaded 0).
  uint32_t key[32];
#pragma unroll
  for (int q = 0; q < 8; ++q) {
    uint4 k4 = make_uint4(0u, 0u, 0u, 0u);
    if ((word >> (4 * q)) & 0xfu) k4 = __ldcg(reinterpret_cast<const uint4*>(gkeys) + 8 * tid + q);
    key[4 * q] = k4.x, key[4 * q + 1] = k4.y, key[4 * q + 2] = k4.z, key[4 * q + 3] = k4.w;
  }
  __syncthreads();
  const uint32_t total = s.hint_total;
  if (total < need || total > uint32_t(kMaxHintCandidates)) {
    if (tid == 0) *count = 0;
    return HistOutcome::kNoCandidates;
  }
  Mark(s, kPhaseCount);
  // Descending bins: c[j] is bin 2047 - 4 t - j (thread 0's c[0], the top bin, from the count).
  uint32_t c[4] = {tid == 0 ? 0u : h.w, h.z, h.y, h.x};
  PivotFromCounts(s, c, kRadixBins, need, hint_rank, total);
  Mark(s, kPhasePivot);
  const uint32_t d = s.digit, pivot = s.pivot, hint_digit = s.hint_digit;
  uint32_t remaining = need - s.above;
  if (d == uint32_t(kRadixBins - 1) || (remaining != pivot && pivot > uint32_t(kDirectRank))) {
    return HistOutcome::kDeclined;  // nothing changed that CandidateTail reads
  }
  // Bins are ranges of keys: bin d is [lo, lo + 2^shift) (d is not the top bin), so a key's bin
  // is compared through its key, and the keys of non-candidates (below the hint, or 0 where
  // their 16 bytes were not loaded) never pass as kept: one compare a key in the loops below.
  const uint32_t lo = uint32_t(uint64_t(hint) + (uint64_t(d) << shift));
  const uint32_t width_m1 = uint32_t((uint64_t(1) << shift) - 1u);
  const bool whole = remaining == pivot;
  uint32_t T = lo;  // with `whole`, every key >= lo is kept
  if (!whole) {
    // The pivot bin's keys into s.cand, then their exact rank.
    uint32_t in_bin = 0;
#pragma unroll
    for (int i = 0; i < 32; ++i) in_bin |= uint32_t(key[i] - lo <= width_m1) << i;
    in_bin &= word;
    const uint32_t mine = uint32_t(__popc(in_bin));
    const uint32_t incl = WarpInclusiveScan(mine);
    uint32_t base = 0;
    if (lane == 31 && incl != 0) base = atomicAdd(&s.ncand, incl);
    uint32_t at = __shfl_sync(0xffffffffu, base, 31) + incl - mine;
    if (in_bin != 0) {
#pragma unroll
      for (int i = 0; i < 32; ++i) {
        const bool keep = (in_bin >> i) & 1u;
        SharedStoreIf(s.cand + at, key[i], keep);
        at += uint32_t(keep);
      }
    }
    __syncthreads();
    Mark(s, kPhaseCompact);
    if (s.ncand != pivot) {  // never (the scoring's bins are these); keeps the rank in bounds
      __syncthreads();
      if (tid == 0) s.ncand = 0;
      return HistOutcome::kDeclined;
    }
    RankCandidates(s, pivot, remaining);
    T = s.digit;
    remaining -= s.above;
    Mark(s, kPhaseNarrow);
  }
  // Kept: every key > T (the bins above d and the pivot bin's keys above T), and the first
  // `remaining` equal to T in block order; with `whole`, every key >= lo.
  uint32_t gt = 0, eq = 0;
  if (whole) {
#pragma unroll
    for (int i = 0; i < 32; ++i) gt |= uint32_t(key[i] >= T) << i;
  } else {
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      gt |= uint32_t(key[i] > T) << i;
      eq |= uint32_t(key[i] == T) << i;
    }
  }
  gt &= word;
  eq &= word;
  Mark(s, kPhaseBitmaps);
  StoreKeptWords(s, gt, eq, remaining, out);
  if (tid == 0) *count = 0;
  *hint_out = uint32_t(uint64_t(hint) + (uint64_t(hint_digit) << shift));
  *t_out = T;
  return HistOutcome::kDone;
}

}  // namespace resa::cuda::select_tail
