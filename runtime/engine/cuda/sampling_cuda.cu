#include <cooperative_groups.h>

#include <array>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cub/block/block_scan.cuh>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/launch.h"
#include "runtime/engine/cuda/argmax_key.cuh"
#include "runtime/engine/cuda/sampling_cuda.h"

namespace resa::cuda {
namespace {

namespace cg = cooperative_groups;
using argmax_internal::ArgMaxStep;
using argmax_internal::FromKey;
using argmax_internal::Key;

constexpr int kMaxCluster = 8;  // CTAs a row in a portable cluster (kWideCluster: 16)
constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kBins = 256;
constexpr int kCopies = 4;  // privatised histograms per block
constexpr int kSearchBatch = 4;  // elements a thread loads before binning them (Search)
constexpr int kCap = 4096;       // a candidate set small enough for one CTA to sort (Resolver)
constexpr int kItems = kCap / kThreads;  // sorted positions a thread
// A CTA's slice of the row, up to this many elements, is kept in shared memory as keys and
// weights for the passes after the first (vocab 151,936 in 8 slices: 18,996).
constexpr int kSliceMax = 19456;

// The CPU twin's weight, bit for bit up to exp's last-ulp (float(l - m), fp64 exp, float).
// Below -104 the fp32 rounding of exp is 0 (exp(-104) < 2^-150), so exp is skipped there.
__device__ __forceinline__ float Weight(float l, float m, float t) {
  const double d = double(l - m) / double(t);
  return d < -104.0 ? 0.0f : float(exp(d));
}

// This thread's share of the arg-max of row[lo, hi) (0 when it holds nothing). A 16-byte-aligned
// slice is read as float4, kArgMaxBatch loads in flight per thread (scalar loads one at a time
// kept the max pass latency-bound: 22 us at vocab 151,936 with one block a row).
constexpr int kArgMaxBatch = 8;
// skey (when not null) gets the key of every element, skey[j - lo].
__device__ uint64_t ThreadArgMax(const float* row, int lo, int hi, uint32_t* skey) {
  uint64_t best = 0;
  int tail = lo;
  auto step = [&](float v, int j) {
    best = ArgMaxStep(best, v, j);
    if (skey != nullptr) skey[j - lo] = Key(v);
  };
  if ((reinterpret_cast<uintptr_t>(row + lo) & 15) == 0) {
    const float4* row4 = reinterpret_cast<const float4*>(row + lo);
    const int n4 = (hi - lo) / 4;
    int i = threadIdx.x;
    for (; i + (kArgMaxBatch - 1) * kThreads < n4; i += kArgMaxBatch * kThreads) {
      float4 v[kArgMaxBatch];
#pragma unroll
      for (int u = 0; u < kArgMaxBatch; ++u) v[u] = row4[i + u * kThreads];
#pragma unroll
      for (int u = 0; u < kArgMaxBatch; ++u) {
        const int j = lo + 4 * (i + u * kThreads);
        step(v[u].x, j);
        step(v[u].y, j + 1);
        step(v[u].z, j + 2);
        step(v[u].w, j + 3);
      }
    }
    for (; i < n4; i += kThreads) {
      const float4 v = row4[i];
      const int j = lo + 4 * i;
      step(v.x, j);
      step(v.y, j + 1);
      step(v.z, j + 2);
      step(v.w, j + 3);
    }
    tail = lo + 4 * n4;
  }
  for (int j = tail + int(threadIdx.x); j < hi; j += kThreads) step(row[j], j);
  return best;
}

__device__ uint64_t BlockMax(uint64_t x, uint64_t* red) {
  for (int o = 16; o > 0; o >>= 1) {
    const uint64_t y = __shfl_xor_sync(0xffffffffu, x, o);
    x = y > x ? y : x;
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = x;
  __syncthreads();
  x = red[0];
  for (int w = 1; w < kWarps; ++w) x = red[w] > x ? red[w] : x;
  return x;
}
__device__ double BlockSum(double x, double* red) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = x;
  __syncthreads();
  x = 0.0;
  for (int w = 0; w < kWarps; ++w) x += red[w];  // same order in every thread: same value
  return x;
}
__device__ int BlockMinInt(int x, int* red) {
  for (int o = 16; o > 0; o >>= 1) x = min(x, __shfl_xor_sync(0xffffffffu, x, o));
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = x;
  __syncthreads();
  x = red[0];
  for (int w = 1; w < kWarps; ++w) x = min(x, red[w]);
  return x;
}

// The candidates: every element with key > thr, plus the `take` lowest ids of those with key ==
// thr (weight w_thr each). thr = 0, take = 0: every non-NaN element.
struct Cands {
  uint32_t thr;
  int take;
  float w_thr;
};

// An element found by a search or a resolve, in the order (key desc, id asc) of the candidates.
struct Pick {
  uint32_t key;      // its key
  int index;         // its rank by id among the candidates with that key
  int id;            // its id; -1 when NthWithKey must find it
  int count_before;  // candidates ordered before its group of equal keys
  double before;     // their summed weight (a count search: their count)
  int pos;           // Resolver: its position (the gathered elements, then the group at thr)
};

using ScanD = cub::BlockScan<double, kThreads, cub::BLOCK_SCAN_WARP_SCANS>;

struct Smem {
  union {
    struct {
      double stage[kThreads];  // one value per thread, summed per bin inside each warp
      double part_mass[kCopies * kBins];
      int part_cnt[kWarps * kBins];  // counts: a histogram per warp; weights: kCopies
    } h;                             // a search level's privatised histograms
    // A small candidate set gathered into rank 0 (its arrays are the cluster's; no search
    // level is running then), and the Resolver's running sums.
    struct {
      uint64_t set[kCap];  // (key << 32) | ~id: descending order is (key desc, id asc)
      double excl[kCap];   // the running sum before each sorted position
    } g;
  } u;
  typename ScanD::TempStorage scan;  // Resolver (rank 0)
  double mass[kBins];                // this CTA's histogram (read by the cluster)
  int cnt[kBins];
  uint64_t red64[kWarps];
  double redf[kWarps];
  int redi[kWarps];
  double gmass[kBins];  // the histograms summed over the cluster's CTAs
  int gcnt[kBins];
  uint64_t x64;  // this CTA's value in a cluster reduction
  double xf;
  int xi;
  int hit_bin;
  double hit_before;
  int hit_count;
  bool fallback;
  int token;
  int gn;     // rank 0's: the gathered set's size
  int gl;     // this CTA's elements of a gather, then its next slot
  int gbase;  // its first slot in rank 0's set
  int p_hit, g0;
  double bcast;
  Pick pick;  // rank 0's is what the cluster reads
  // The CTA's slice of the row (Slice): keys, and the candidates' weights once computed.
  uint32_t skey[kSliceMax];
  float swt[kSliceMax];
};

// The dynamic shared memory of one CTA (with the static scan storage of NthWithKey) fits the
// H100 / H200 limit of 227 KB a block.
static_assert(sizeof(Smem) + 1024 <= 227 * 1024, "SampleRowsKernel's shared memory");

// A CTA's slice row[lo, hi) of the row: keys and weights from shared memory when the slice fits
// there (cached), else from the logits and the global weights workspace.
struct Slice {
  const float* row;
  float* w;  // global weights, [vocab] (indexed by id)
  int lo, hi;
  bool cached;
  uint32_t* skey;
  float* swt;
  __device__ uint32_t key(int j) const { return cached ? skey[j - lo] : Key(row[j]); }
  __device__ float weight(int j) const { return cached ? swt[j - lo] : w[j]; }
  __device__ void set_weight(int j, float x) const {
    if (cached) {
      swt[j - lo] = x;
    } else {
      w[j] = x;
    }
  }
};

// Cluster reductions of block-reduced values: each CTA publishes its value in its shared `slot`,
// and every thread folds the values of ranks [0, ranks) in rank order, so every CTA gets the
// same bits; the second barrier keeps the slots until everyone has read them.
template <typename T, typename Fold>
__device__ T ClusterFold(T block_value, T& slot, unsigned ranks, T init, Fold fold) {
  cg::cluster_group cl = cg::this_cluster();
  if (threadIdx.x == 0) slot = block_value;
  cl.sync();
  T x = init;
  for (unsigned r = 0; r < ranks; ++r) x = fold(x, *cl.map_shared_rank(&slot, r));
  cl.sync();
  return x;
}
__device__ uint64_t ClusterMax(uint64_t x, Smem& s) {
  return ClusterFold(BlockMax(x, s.red64), s.x64, cg::this_cluster().num_blocks(), uint64_t(0),
                     [](uint64_t a, uint64_t b) { return b > a ? b : a; });
}
__device__ double ClusterSum(double x, Smem& s) {
  return ClusterFold(BlockSum(x, s.redf), s.xf, cg::this_cluster().num_blocks(), 0.0,
                     [](double a, double b) { return a + b; });
}
__device__ int ClusterMinInt(int x, Smem& s) {
  return ClusterFold(BlockMinInt(x, s.redi), s.xi, cg::this_cluster().num_blocks(), INT_MAX,
                     [](int a, int b) { return min(a, b); });
}
// Counts: x becomes this CTA's total; returns the totals of the CTAs ranked before it.
__device__ int ClusterExclusiveCount(int& x, Smem& s) {
  x = int(BlockSum(double(x), s.redf));
  return ClusterFold(x, s.xi, cg::this_cluster().block_rank(), 0,
                     [](int a, int b) { return a + b; });
}

// The elements of this CTA's slice whose key passes `keep` (at most kCap in the cluster),
// appended to rank 0's set as (key << 32) | ~id in no particular order: each CTA counts its
// elements, claims a range of slots with one remote atomic, then writes. All threads of the
// cluster; ends with a cluster barrier.
template <typename Keep>
__device__ void Gather(const Slice& sl, Keep keep, Smem& s) {
  cg::cluster_group cl = cg::this_cluster();
  const unsigned lane = threadIdx.x & 31u;
  if (threadIdx.x == 0) s.gl = 0;
  __syncthreads();
  for (int base = sl.lo; base < sl.hi; base += kThreads) {
    const int j = base + int(threadIdx.x);
    const unsigned ballot = __ballot_sync(0xffffffffu, j < sl.hi && keep(sl.key(j)));
    if (lane == 0 && ballot != 0) atomicAdd(&s.gl, __popc(ballot));
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    s.gbase = s.gl > 0 ? atomicAdd(cl.map_shared_rank(&s.gn, 0), s.gl) : 0;
    s.gl = 0;
  }
  __syncthreads();
  uint64_t* const set = cl.map_shared_rank(s.u.g.set, 0);
  for (int base = sl.lo; base < sl.hi; base += kThreads) {
    const int j = base + int(threadIdx.x);
    const uint32_t k = j < sl.hi ? sl.key(j) : 0u;
    const bool in = j < sl.hi && keep(k);
    const unsigned ballot = __ballot_sync(0xffffffffu, in);
    if (ballot == 0) continue;
    int slot = 0;
    if (lane == unsigned(__ffs(ballot) - 1)) slot = atomicAdd(&s.gl, __popc(ballot));
    slot = s.gbase + __shfl_sync(0xffffffffu, slot, __ffs(ballot) - 1) +
           __popc(ballot & ((1u << lane) - 1u));
    if (in && slot < kCap) set[slot] = (uint64_t(k) << 32) | ~uint32_t(j);
  }
  cl.sync();
}

// Sorts a[0, n) descending (n a power of two, 64 .. kCap): a bitonic network whose steps with
// partners 64 or more apart run on shared memory between CTA barriers, and the others inside
// each warp's blocks of 64 (two a lane, shuffles for partners within a warp). All threads of the
// CTA.
__device__ void BitonicDescending(uint64_t* a, int n) {
  const int lane = int(threadIdx.x & 31u);
  // Steps j = j0 .. 1 of merge k on every 64-element block, in registers. The pair (i, i + j)
  // leaves the larger value at i where (i & k) == 0, the smaller one elsewhere.
  auto in_warps = [&](int k_lo, int k_hi, int j0) {
    for (int blk = int(threadIdx.x >> 5) * 64; blk < n; blk += kWarps * 64) {
      uint64_t r[2] = {a[blk + lane], a[blk + 32 + lane]};
      for (int k = k_lo; k <= k_hi; k <<= 1) {
        for (int j = k == k_lo ? j0 : min(k >> 1, 32); j > 0; j >>= 1) {
          if (j == 32) {
            const bool up = ((blk + lane) & k) == 0;
            const uint64_t hi = max(r[0], r[1]), lo = min(r[0], r[1]);
            r[0] = up ? hi : lo;
            r[1] = up ? lo : hi;
            continue;
          }
#pragma unroll
          for (int q = 0; q < 2; ++q) {
            const uint64_t y = __shfl_xor_sync(0xffffffffu, r[q], j);
            const int i = (blk + 32 * q + lane) & ~j;  // the pair's lower index
            const bool keep_max = (((i & k) == 0) == ((lane & j) == 0));
            r[q] = keep_max ? max(r[q], y) : min(r[q], y);
          }
        }
      }
      a[blk + lane] = r[0];
      a[blk + 32 + lane] = r[1];
    }
    __syncthreads();
  };
  in_warps(2, min(n, 64), 1);  // every merge of up to 64 elements
  for (int k = 128; k <= n; k <<= 1) {
    for (int j = k >> 1; j >= 64; j >>= 1) {
      for (int t = int(threadIdx.x); t < n / 2; t += kThreads) {
        const int i = ((t & ~(j - 1)) << 1) | (t & (j - 1));
        const uint64_t x = a[i], y = a[i + j];
        if ((i & k) == 0 ? x < y : x > y) {
          a[i] = y;
          a[i + j] = x;
        }
      }
      __syncthreads();
    }
    in_warps(k, k, 32);
  }
}

// Rank 0's view of a gathered set, all its threads: the gathered elements sorted by (key desc,
// id asc), their weights (or 1 each, counting) and running sums, followed by the `take`
// candidates of key thr (weight w_thr each), which are not gathered; positions count in that
// order.
struct Resolver {
  double incl[kItems];  // position p = threadIdx.x * kItems + i: before + weights of <= p
  int g;                // gathered elements
  double tot;           // before + their summed weight
  int count_before;
  Cands c;

  __device__ void Build(Smem& s, bool count, float m, float t, double before_in,
                        int count_before_in, const Cands& cands) {
    g = min(s.gn, kCap);
    c = cands;
    count_before = count_before_in;
    int n = 64;
    while (n < g) n <<= 1;
    for (int p = g + int(threadIdx.x); p < n; p += kThreads) s.u.g.set[p] = 0;  // sorts last
    __syncthreads();
    if (g > 1) BitonicDescending(s.u.g.set, n);
    double sum = 0.0;
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int p = int(threadIdx.x) * kItems + i;
      incl[i] = p >= g  ? 0.0
                : count ? 1.0
                        : double(Weight(FromKey(uint32_t(s.u.g.set[p] >> 32)), m, t));
      sum += incl[i];
    }
    double run = 0.0, agg = 0.0;
    ScanD(s.scan).ExclusiveSum(sum, run, agg);
    run += before_in;
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int p = int(threadIdx.x) * kItems + i;
      if (p < g) s.u.g.excl[p] = run;
      run += incl[i];
      incl[i] = run;
    }
    tot = before_in + agg;
    __syncthreads();  // gexcl complete; the scan storage free again
  }

  // The running sum through gathered position p (< g), in every thread.
  __device__ double InclAt(Smem& s, int p) {
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      if (int(threadIdx.x) * kItems + i == p) s.bcast = incl[i];
    }
    __syncthreads();
    const double x = s.bcast;
    __syncthreads();
    return x;
  }

  // The first position <= pmax whose running sum reaches `target` (pmax when none does:
  // rounding), as a Pick in s.pick and returned to every thread (id -1 in the group at thr).
  __device__ Pick Locate(Smem& s, double target, int pmax) {
    if (threadIdx.x == 0) {
      s.p_hit = INT_MAX;
      s.g0 = INT_MAX;
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int p = int(threadIdx.x) * kItems + i;
      if (p < g && p <= pmax && incl[i] >= target) {
        atomicMin(&s.p_hit, p);
        break;
      }
    }
    __syncthreads();
    int pos = s.p_hit;
    if (pos == INT_MAX) {
      pos = pmax;  // unreached: the last candidate allowed
      const double rem = target - tot;
      if (pmax >= g && c.take > 0 && (rem <= 0.0 || c.w_thr > 0.0f)) {
        // In the group at thr: arithmetic (equal weights).
        const double q = rem > 0.0 ? ceil(rem / double(c.w_thr)) - 1.0 : 0.0;
        pos = g + (q <= 0.0 ? 0 : q >= double(pmax - g) ? pmax - g : int(q));
      }
    }
    pos = max(pos, 0);
    if (pos >= g) {
      if (threadIdx.x == 0) s.pick = Pick{c.thr, pos - g, -1, count_before + g, tot, pos};
      __syncthreads();
      return s.pick;
    }
    // A gathered position: its group of equal keys starts at g0.
    const uint32_t k = uint32_t(s.u.g.set[pos] >> 32);
    for (int p = int(threadIdx.x); p <= pos; p += kThreads) {
      if (uint32_t(s.u.g.set[p] >> 32) == k) atomicMin(&s.g0, p);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      const int g0 = s.g0;
      s.pick =
          Pick{k, pos - g0, int(~uint32_t(s.u.g.set[pos])), count_before + g0, s.u.g.excl[g0], pos};
    }
    __syncthreads();
    return s.pick;
  }

  // Cuts the top_p nucleus of positions [0, pmax] (summed weight `total`) and draws at u.
  __device__ void CutAndDraw(Smem& s, int pmax, double total, float top_p, double u, float m,
                             float t) {
    if (top_p < 1.0f) {
      const Pick cut = Locate(s, double(top_p) * total, pmax);
      const double wk = cut.pos < g ? double(Weight(FromKey(cut.key), m, t)) : double(c.w_thr);
      total = cut.before + double(cut.index + 1) * wk;
      pmax = cut.pos;
    }
    Locate(s, u * total, pmax);
  }
};

// Rank 0 runs `resolve` (all its threads; it leaves its answer in s.pick and may use the
// gathered set), then every CTA of the cluster returns rank 0's Pick.
template <typename Resolve>
__device__ Pick FromRank0(Smem& s, Resolve resolve) {
  cg::cluster_group cl = cg::this_cluster();
  if (cl.block_rank() == 0) {
    resolve();
    if (threadIdx.x == 0) s.gn = 0;  // the next gather starts empty
  }
  cl.sync();
  const Pick p = *cl.map_shared_rank(&s.pick, 0);
  cl.sync();
  return p;
}

// Where a search stopped: resolved (pick), or at a bin small enough for rank 0 (gather: the
// candidates whose key matches prefix above `shift`, after `before` / `count_before`).
struct Stop {
  Pick pick;
  bool gather;
  uint32_t prefix;
  int shift;
  double before;
  int count_before;
};

// The first candidate (order: key desc, id asc) whose running weight sum (kCount: running
// count) reaches `target`; the last candidate if rounding leaves it unreached. All threads.
// Radix levels of 8 bits narrow the key; once the level's bin holds at most kCap candidates
// (and the level is not the last, unless want_id: the id is asked for) the search stops there
// for ResolveBin. A search that runs all four levels leaves the id to NthWithKey (id -1).
template <bool kCount>
__device__ Stop Search(const Slice& sl, const Cands& c, float m, float t, double target,
                       bool want_id, Smem& s) {
  cg::cluster_group cl = cg::this_cluster();
  uint32_t prefix = 0;
  double before = 0.0;
  int count_before = 0;
  bool fallback = false;
  int group = 0;
  constexpr int kCountCopies = kCount ? kWarps : kCopies;
  for (int shift = 24; shift >= 0; shift -= 8) {
    const uint32_t hi_mask = shift == 24 ? 0u : (~0u << (shift + 8));
    for (int b = threadIdx.x; b < kCountCopies * kBins; b += kThreads) s.u.h.part_cnt[b] = 0;
    if (!kCount) {
      for (int b = threadIdx.x; b < kCopies * kBins; b += kThreads) s.u.h.part_mass[b] = 0.0;
    }
    __syncthreads();
    // Counts: a histogram per warp, one shared atomic a key. Weights: warp w adds to copy
    // w % kCopies, the lanes of one bin summed first (fp64 atomics are compare-and-swap loops).
    const int warp = int(threadIdx.x >> 5);
    const int copy = (kCount ? warp : warp % kCopies) * kBins;
    // kSearchBatch elements a thread per trip, their loads first; a warp none of whose lanes
    // holds a candidate of this level (most warps below level 0) skips the bin aggregation.
    for (int base = sl.lo; base < sl.hi; base += kSearchBatch * kThreads) {
      uint32_t keys[kSearchBatch];
#pragma unroll
      for (int u = 0; u < kSearchBatch; ++u) {
        const int j = base + u * kThreads + int(threadIdx.x);
        keys[u] = j < sl.hi ? sl.key(j) : 0u;  // key 0 is never a candidate (thr >= 0)
      }
#pragma unroll
      for (int u = 0; u < kSearchBatch; ++u) {
        const int j = base + u * kThreads + int(threadIdx.x);
        const uint32_t k = keys[u];
        const bool in = k > c.thr && ((k ^ prefix) & hi_mask) == 0;
        const int b = in ? int((k >> shift) & 0xffu) : -1;
        if (kCount) {
          if (in) atomicAdd(&s.u.h.part_cnt[copy + b], 1);
          continue;
        }
        if (__ballot_sync(0xffffffffu, in) == 0) continue;
        // Lanes of one bin add once, through their lowest lane.
        const unsigned peers = __match_any_sync(0xffffffffu, b);
        const bool leader = in && int(threadIdx.x & 31) == __ffs(peers) - 1;
        s.u.h.stage[threadIdx.x] = in ? double(sl.weight(j)) : 0.0;
        __syncwarp();
        if (leader) {
          const int warp0 = int(threadIdx.x & ~31u);
          double sum = 0.0;
          for (unsigned r = peers; r != 0; r &= r - 1) sum += s.u.h.stage[warp0 + __ffs(r) - 1];
          atomicAdd(&s.u.h.part_cnt[copy + b], __popc(peers));
          atomicAdd(&s.u.h.part_mass[copy + b], sum);
        }
        __syncwarp();
      }
    }
    __syncthreads();
    for (int b = threadIdx.x; b < kBins; b += kThreads) {
      double m2 = 0.0;
      int c2 = 0;
      for (int i = 0; i < kCountCopies; ++i) c2 += s.u.h.part_cnt[i * kBins + b];
      if (!kCount) {
        for (int i = 0; i < kCopies; ++i) m2 += s.u.h.part_mass[i * kBins + b];
      }
      s.mass[b] = kCount ? double(c2) : m2;
      s.cnt[b] = c2;
    }
    // The cluster's histogram, summed in rank order (the same bits in every CTA).
    cl.sync();
    for (int b = threadIdx.x; b < kBins; b += kThreads) {
      // The ranks' bins in rank order, four remote loads in flight at a time.
      const unsigned nb = cl.num_blocks();
      double m2 = 0.0;
      int c2 = 0;
      for (unsigned r0 = 0; r0 < nb; r0 += 4) {
        double mr[4];
        int cr[4];
#pragma unroll
        for (unsigned r = 0; r < 4; ++r) {
          mr[r] = r0 + r < nb ? *cl.map_shared_rank(&s.mass[b], r0 + r) : 0.0;
          cr[r] = r0 + r < nb ? *cl.map_shared_rank(&s.cnt[b], r0 + r) : 0;
        }
#pragma unroll
        for (unsigned r = 0; r < 4; ++r) {
          if (r0 + r < nb) {
            m2 += mr[r];
            c2 += cr[r];
          }
        }
      }
      if (c.take > 0 && ((c.thr ^ prefix) & hi_mask) == 0 && b == int((c.thr >> shift) & 0xffu)) {
        c2 += c.take;
        m2 += kCount ? double(c.take) : double(c.take) * double(c.w_thr);
      }
      s.gmass[b] = m2;
      s.gcnt[b] = c2;
    }
    cl.sync();  // also the CTA barrier before gmass is read
    if (threadIdx.x < 32) {
      // Lane l holds bins 255 - 8l down to 248 - 8l (descending key order).
      const int lane = threadIdx.x;
      double sum = 0.0;
      int csum = 0;
      bool any = false;
      for (int i = 0; i < 8; ++i) {
        const int b = kBins - 1 - 8 * lane - i;
        sum += s.gmass[b];
        csum += s.gcnt[b];
        any |= s.gcnt[b] > 0;
      }
      double incl = sum;
      int cincl = csum;
      for (int o = 1; o < 32; o <<= 1) {
        const double y = __shfl_up_sync(0xffffffffu, incl, o);
        const int cy = __shfl_up_sync(0xffffffffu, cincl, o);
        if (lane >= o) {
          incl += y;
          cincl += cy;
        }
      }
      const double excl = incl - sum;
      const int cexcl = cincl - csum;
      const double rem = target - before;
      int hit = -1, hit_cnt = 0;
      double acc = excl, hit_acc = 0.0;
      int cacc = cexcl;
      for (int i = 0; i < 8 && hit < 0; ++i) {
        const int b = kBins - 1 - 8 * lane - i;
        if (s.gcnt[b] > 0 && acc + s.gmass[b] >= rem) {
          hit = b;
          hit_acc = acc;
          hit_cnt = cacc;
        }
        acc += s.gmass[b];
        cacc += s.gcnt[b];
      }
      const unsigned hits = __ballot_sync(0xffffffffu, hit >= 0);
      if (hits != 0) {
        if (lane == __ffs(hits) - 1) {
          s.hit_bin = hit;
          s.hit_before = hit_acc;
          s.hit_count = hit_cnt;
          s.fallback = false;
        }
      } else {
        // Unreached (rounding): the lowest non-empty bin, i.e. the last candidate.
        const unsigned nonempty = __ballot_sync(0xffffffffu, any);
        if (lane == 31 - __clz(nonempty)) {
          int low = -1, low_cnt = 0;
          double a = excl, low_acc = 0.0;
          int ca = cexcl;
          for (int i = 0; i < 8; ++i) {
            const int b = kBins - 1 - 8 * lane - i;
            if (s.gcnt[b] > 0) {
              low = b;
              low_acc = a;
              low_cnt = ca;
            }
            a += s.gmass[b];
            ca += s.gcnt[b];
          }
          s.hit_bin = low;
          s.hit_before = low_acc;
          s.hit_count = low_cnt;
          s.fallback = true;
        }
      }
    }
    __syncthreads();
    const int b = s.hit_bin;
    prefix |= uint32_t(b) << shift;
    before += s.hit_before;
    count_before += s.hit_count;
    fallback |= s.fallback;
    group = s.gcnt[b];
    __syncthreads();  // the histograms are cleared next
    if (group <= kCap && (want_id || shift > 0)) {
      // Small enough: rank 0 resolves the bin (ResolveBin).
      return Stop{Pick{}, true, prefix, shift, before, count_before};
    }
  }
  Pick f{prefix, 0, -1, count_before, before, 0};
  if (fallback) {
    f.index = group - 1;
  } else {
    const double wk = kCount ? 1.0 : double(Weight(FromKey(prefix), m, t));
    const double rem = target - before;
    if (rem > 0.0 && wk > 0.0) {
      const double q = ceil(rem / wk) - 1.0;
      f.index = q <= 0.0 ? 0 : q >= double(group - 1) ? group - 1 : int(q);
    }
  }
  return Stop{f, false, prefix, 0, before, count_before};
}

// Rank 0 resolves the bin a search stopped at: its candidates gathered, sorted and summed in
// order (those of key thr stay the counted group after them). All threads of the cluster.
__device__ Pick ResolveBin(const Slice& sl, const Cands& c, float m, float t, double target,
                           bool count, const Stop& at, Smem& s) {
  const uint32_t mask = ~0u << at.shift;
  Gather(
      sl, [&](uint32_t k) { return k > c.thr && ((k ^ at.prefix) & mask) == 0; }, s);
  const bool thr_here = c.take > 0 && ((c.thr ^ at.prefix) & mask) == 0;
  return FromRank0(s, [&] {
    Resolver r;
    r.Build(s, count, m, t, at.before, at.count_before,
            Cands{c.thr, thr_here ? c.take : 0, c.w_thr});
    r.Locate(s, target, r.g + (thr_here ? c.take : 0) - 1);
  });
}

// Search, then ResolveBin where it stopped early.
template <bool kCount>
__device__ Pick Find(const Slice& sl, const Cands& c, float m, float t, double target, bool want_id,
                     Smem& s) {
  const Stop at = Search<kCount>(sl, c, m, t, target, want_id, s);
  return at.gather ? ResolveBin(sl, c, m, t, target, kCount, at, s) : at.pick;
}

// The candidates of `c`, at most kCap of them: gathered into rank 0, which cuts the top_p
// nucleus (top_p < 1) and draws at u. All threads of the cluster.
__device__ Pick ResolveSmall(const Slice& sl, const Cands& c, float m, float t, float top_p,
                             double u, Smem& s) {
  Gather(
      sl, [&](uint32_t k) { return k > c.thr; }, s);
  return FromRank0(s, [&] {
    Resolver r;
    r.Build(s, false, m, t, 0.0, 0, c);
    r.CutAndDraw(s, r.g + c.take - 1, r.tot + double(c.take) * double(c.w_thr), top_p, u, m, t);
  });
}

// The top_k cut stopped at the row's first bin (no candidate before it), small enough to
// gather: that bin holds all top_k candidates, so rank 0 cuts at position top_k - 1, then
// cuts the nucleus and draws, from one gathered set. All threads of the cluster.
__device__ Pick ResolveTopBin(const Slice& sl, const Stop& at, int top_k, float m, float t,
                              float top_p, double u, Smem& s) {
  const uint32_t mask = ~0u << at.shift;
  Gather(
      sl, [&](uint32_t k) { return k > 0u && ((k ^ at.prefix) & mask) == 0; }, s);
  return FromRank0(s, [&] {
    Resolver r;
    r.Build(s, false, m, t, 0.0, 0, Cands{0u, 0, 0.0f});
    const int pmax = min(top_k, r.g) - 1;
    r.CutAndDraw(s, pmax, r.InclAt(s, pmax), top_p, u, m, t);
  });
}

// The id of the `index`-th (by id) element of the row whose key is `key`, or n if there is
// none. All threads of the cluster.
__device__ int NthWithKey(const Slice& sl, int n, uint32_t key, int index, Smem& s) {
  if (index == 0) {
    int first = n;
    for (int j = sl.lo + int(threadIdx.x); j < sl.hi; j += kThreads) {
      if (sl.key(j) == key) {
        first = j;
        break;
      }
    }
    return ClusterMinInt(first, s);
  }
  // The CTA whose slice holds the element scans it in id order; the others answer n.
  int mine = 0;
  for (int j = sl.lo + int(threadIdx.x); j < sl.hi; j += kThreads) {
    mine += sl.key(j) == key ? 1 : 0;
  }
  const int local = index - ClusterExclusiveCount(mine, s);
  using Scan = cub::BlockScan<int, kThreads, cub::BLOCK_SCAN_WARP_SCANS>;
  __shared__ typename Scan::TempStorage scan;
  if (threadIdx.x == 0) s.token = n;
  __syncthreads();
  if (local >= 0 && local < mine) {
    int base = 0;
    for (int start = sl.lo; start < sl.hi && base <= local; start += kThreads) {
      const int j = start + int(threadIdx.x);
      const int flag = j < sl.hi && sl.key(j) == key ? 1 : 0;
      int excl = 0, total = 0;
      Scan(scan).ExclusiveSum(flag, excl, total);
      if (flag && base + excl == local) s.token = j;
      base += total;
      __syncthreads();  // scan storage reuse; s.token
    }
  }
  __syncthreads();
  return ClusterMinInt(s.token, s);
}

// This CTA's slice [lo, hi) of a row of n logits (cluster rank r: slice r), a multiple of 4
// long so that slices stay aligned.
__device__ void SliceBounds(int n, int& lo, int& hi) {
  cg::cluster_group cl = cg::this_cluster();
  const int slice = (n / int(cl.num_blocks()) + 4) / 4 * 4;
  lo = min(n, int(cl.block_rank()) * slice);
  hi = min(n, lo + slice);
}

// Grid: one cluster of 1-16 CTAs a row (SampleRowsCuda picks the size); CTA r of a cluster holds
// the row's slice r.
__global__ void __launch_bounds__(kThreads)
    SampleRowsKernel(const float* logits, int n, const SampleRowSpec* specs, float* weights,
                     int32_t* tokens) {
  extern __shared__ __align__(16) uint8_t smem_raw[];
  Smem& s = *reinterpret_cast<Smem*>(smem_raw);
  cg::cluster_group cl = cg::this_cluster();
  const int i = int(blockIdx.x / cl.num_blocks());
  const int rank = int(cl.block_rank());
  const SampleRowSpec sp = specs[i];
  const float* row = logits + size_t(sp.row) * size_t(n);
  int lo = 0, hi = 0;
  SliceBounds(n, lo, hi);
  if (threadIdx.x == 0) s.gn = 0;  // visible to the cluster after ClusterMax's barriers
  const bool greedy = sp.temperature == 0.0f || sp.top_k == 1;
  const Slice sl{
      row, weights + size_t(i) * size_t(n), lo, hi, !greedy && hi - lo <= kSliceMax, s.skey, s.swt};

  // Arg-max: the largest (key, -id); the slice's keys cached on the way.
  const uint64_t best = ClusterMax(ThreadArgMax(row, lo, hi, sl.cached ? s.skey : nullptr), s);
  const int top = int(~uint32_t(best & 0xffffffffu));
  const float m = FromKey(uint32_t(best >> 32));
  if (greedy || !isfinite(m)) {
    if (rank == 0 && threadIdx.x == 0) tokens[i] = top;
    return;
  }
  const float t = sp.temperature;

  Cands c{0u, 0, 0.0f};
  int ncand = n;  // candidates, at most
  Pick f;
  bool done = false;
  if (sp.top_k > 0 && sp.top_k < n) {
    const Stop at = Search<true>(sl, c, m, t, double(sp.top_k), false, s);
    if (at.gather && at.count_before == 0) {
      // The first bin holds every top_k candidate: one gathered set does all.
      f = ResolveTopBin(sl, at, sp.top_k, m, t, sp.top_p, sp.u, s);
      done = true;
    } else {
      f = at.gather ? ResolveBin(sl, c, m, t, double(sp.top_k), true, at, s) : at.pick;
      c = Cands{f.key, f.index + 1, Weight(FromKey(f.key), m, t)};
      ncand = f.count_before + c.take;
    }
  }
  if (done) {
    // resolved from the top_k bin
  } else if (ncand <= kCap) {
    f = ResolveSmall(sl, c, m, t, sp.top_p, sp.u, s);
  } else {
    // Weights of the candidates, and their total.
    double part = 0.0;
    for (int j = lo + int(threadIdx.x); j < hi; j += kThreads) {
      const uint32_t k = sl.key(j);
      if (k <= c.thr) continue;
      const float x = Weight(FromKey(k), m, t);
      sl.set_weight(j, x);
      part += x;
    }
    double total = ClusterSum(part, s) + double(c.take) * double(c.w_thr);
    bool small = false;
    if (sp.top_p < 1.0f) {
      f = Find<false>(sl, c, m, t, double(sp.top_p) * total, false, s);
      c = Cands{f.key, f.index + 1, Weight(FromKey(f.key), m, t)};
      total = f.before + double(c.take) * double(c.w_thr);
      small = f.count_before + c.take <= kCap;
    }
    f = small ? ResolveSmall(sl, c, m, t, 1.0f, sp.u, s)
              : Find<false>(sl, c, m, t, sp.u * total, true, s);
  }
  const int id = f.id >= 0 ? f.id : NthWithKey(sl, n, f.key, f.index, s);
  if (rank == 0 && threadIdx.x == 0) tokens[i] = id < n ? id : top;
}

// Greedy rows only (the caller gave no weights workspace): the arg-max pass alone, with a few
// bytes of shared memory instead of the sampling kernel's slice cache.
__global__ void __launch_bounds__(kThreads)
    GreedyRowsKernel(const float* logits, int n, const SampleRowSpec* specs, int32_t* tokens) {
  __shared__ uint64_t red[kWarps];
  __shared__ uint64_t slot;
  cg::cluster_group cl = cg::this_cluster();
  const int i = int(blockIdx.x / cl.num_blocks());
  const float* row = logits + size_t(specs[i].row) * size_t(n);
  int lo = 0, hi = 0;
  SliceBounds(n, lo, hi);
  const uint64_t best =
      ClusterFold(BlockMax(ThreadArgMax(row, lo, hi, nullptr), red), slot, cl.num_blocks(),
                  uint64_t(0), [](uint64_t a, uint64_t b) { return b > a ? b : a; });
  if (cl.block_rank() == 0 && threadIdx.x == 0) tokens[i] = int(~uint32_t(best & 0xffffffffu));
}

constexpr int kWideCluster = 16;

// How many 16-CTA clusters of SampleRowsKernel the current device runs at once (cached per
// device; 0 when it cannot run them).
int MaxWideClusters() {
  static std::array<std::atomic<int>, 64> cache{};  // count + 1; 0 = not asked yet
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) {
    cudaGetLastError();
    return 0;
  }
  const int cached = cache[size_t(device)].load(std::memory_order_relaxed);
  if (cached > 0) return cached - 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(kWideCluster);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = sizeof(Smem);
  cudaLaunchAttribute attr;
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = kWideCluster;
  attr.val.clusterDim.y = 1;
  attr.val.clusterDim.z = 1;
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  int n = 0;
  if (cudaOccupancyMaxActiveClusters(&n, SampleRowsKernel, &cfg) != cudaSuccess) {
    cudaGetLastError();
    n = 0;
  }
  cache[size_t(device)].store(n + 1, std::memory_order_relaxed);
  return n;
}

}  // namespace

absl::Status SampleRowsCuda(const SampleRowsParams& p, cudaStream_t stream) {
  if (p.vocab <= 0 || p.vocab > (1 << 30) || p.num_rows < 0 || p.num_rows > 65535) {
    return absl::InvalidArgumentError("SampleRowsCuda: bad shape");
  }
  if (p.num_rows == 0) return absl::OkStatus();
  if (p.logits == nullptr || p.specs == nullptr || p.tokens == nullptr) {
    return absl::InvalidArgumentError("SampleRowsCuda: null pointer");
  }
  // CTAs a row (sampled rows may take 16, below): the largest power of two <= kMaxCluster that
  // keeps every row's cluster in one wave (a CTA an SM). At vocab 151,936 and T 1, top_p 0.9
  // (H200): 1 row 780 -> 144 us with 8 CTAs; 64 rows at 8 CTAs (4 waves) made greedy 22.7 ->
  // 34.0 us, hence fewer there.
  int cluster = kMaxCluster;
  while (cluster > 1 && int64_t(p.num_rows) * cluster > MultiprocessorCount()) cluster /= 2;
  if (p.weights == nullptr) {
    // Every row is greedy (the contract of a null workspace).
    return CudaStatus(
        LaunchKernel(GreedyRowsKernel, dim3(unsigned(p.num_rows * cluster)), dim3(kThreads), 0,
                     stream, LaunchOptions{cluster, false}, p.logits, p.vocab, p.specs, p.tokens),
        "launching GreedyRowsKernel");
  }
  constexpr int kSmem = int(sizeof(Smem));
  static std::atomic<uint64_t> attr_done;
  cudaError_t err = OncePerDevice(attr_done, [] {
    cudaError_t e =
        cudaFuncSetAttribute(SampleRowsKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
    if (e == cudaSuccess) {
      e = cudaFuncSetAttribute(SampleRowsKernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    }
    return e;
  });
  // Sampled rows take clusters of 16 CTAs (non-portable: half the slice each) when every
  // row's cluster runs at once: the passes over a slice are most of a row's time.
  if (err == cudaSuccess && int64_t(p.num_rows) * kWideCluster <= MultiprocessorCount() &&
      p.num_rows <= MaxWideClusters()) {
    cluster = kWideCluster;
  }
  // An ordinary launch (no PDL): the kernel reads the logits the step just wrote.
  if (err == cudaSuccess) {
    err = LaunchKernel(SampleRowsKernel, dim3(unsigned(p.num_rows * cluster)), dim3(kThreads),
                       size_t(kSmem), stream, LaunchOptions{cluster, false}, p.logits, p.vocab,
                       p.specs, p.weights, p.tokens);
  }
  return CudaStatus(err, "launching SampleRowsKernel");
}

}  // namespace resa::cuda
