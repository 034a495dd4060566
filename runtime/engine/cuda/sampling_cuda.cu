#include <cooperative_groups.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <cub/block/block_scan.cuh>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/launch.h"
#include "runtime/engine/cuda/sampling_cuda.h"

namespace resa::cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kMaxCluster = 8;  // CTAs a row at most (a portable thread-block cluster)
constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kBins = 256;
constexpr int kCopies = 4;  // privatised histograms per block
constexpr int kSearchBatch = 4;  // elements a thread loads before binning them (Search)

// Order-preserving key: a larger logit has a larger key. -0 counts as +0 (the CPU's == ties
// them); NaN gets key 0, below -inf, so it never wins (the CPU twin's arg-max skips NaN).
__device__ __forceinline__ uint32_t Key(float v) {
  if (v != v) return 0u;
  uint32_t b = v == 0.0f ? 0u : __float_as_uint(v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float FromKey(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}
// The CPU twin's weight, bit for bit up to exp's last-ulp (float(l - m), fp64 exp, float).
// Below -104 the fp32 rounding of exp is 0 (exp(-104) < 2^-150), so exp is skipped there.
__device__ __forceinline__ float Weight(float l, float m, float t) {
  const double d = double(l - m) / double(t);
  return d < -104.0 ? 0.0f : float(exp(d));
}

// The larger of `best` and element j (value v) in the arg-max order: (key, -id).
__device__ __forceinline__ uint64_t ArgMaxStep(uint64_t best, float v, int j) {
  const uint64_t x = (uint64_t(Key(v)) << 32) | uint64_t(~uint32_t(j));
  return x > best ? x : best;
}

// This thread's share of the arg-max of row[lo, hi) (0 when it holds nothing). A 16-byte-aligned
// slice is read as float4, kArgMaxBatch loads in flight per thread (scalar loads one at a time
// kept the max pass latency-bound: 22 us at vocab 151,936 with one block a row).
constexpr int kArgMaxBatch = 8;
__device__ uint64_t ThreadArgMax(const float* row, int lo, int hi) {
  uint64_t best = 0;
  int tail = lo;
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
        best = ArgMaxStep(best, v[u].x, j);
        best = ArgMaxStep(best, v[u].y, j + 1);
        best = ArgMaxStep(best, v[u].z, j + 2);
        best = ArgMaxStep(best, v[u].w, j + 3);
      }
    }
    for (; i < n4; i += kThreads) {
      const float4 v = row4[i];
      const int j = lo + 4 * i;
      best = ArgMaxStep(best, v.x, j);
      best = ArgMaxStep(best, v.y, j + 1);
      best = ArgMaxStep(best, v.z, j + 2);
      best = ArgMaxStep(best, v.w, j + 3);
    }
    tail = lo + 4 * n4;
  }
  for (int j = tail + int(threadIdx.x); j < hi; j += kThreads) best = ArgMaxStep(best, row[j], j);
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

struct Found {
  uint32_t key;   // the key of the element where the running sum reaches the target
  int group;      // candidates with that key
  int index;      // 0-based rank (by id) of the element inside that group
  double before;  // summed weight (or count) of the candidates ordered before the group
};

struct Smem {
  double stage[kThreads];  // one value per thread, summed per bin inside each warp
  double part_mass[kCopies * kBins];
  int part_cnt[kCopies * kBins];
  double mass[kBins];
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
  bool fallback;
  int token;
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

// The first candidate (order: key desc, id asc) whose running weight sum (kCount: running
// count) reaches `target`; the last candidate if rounding leaves it unreached. All threads.
template <bool kCount>
__device__ Found Search(const float* row, const float* w, int lo, int hi, const Cands& c, float m,
                        float t, double target, Smem& s) {
  cg::cluster_group cl = cg::this_cluster();
  uint32_t prefix = 0;
  double before = 0.0;
  bool fallback = false;
  int group = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    const uint32_t hi_mask = shift == 24 ? 0u : (~0u << (shift + 8));
    for (int b = threadIdx.x; b < kCopies * kBins; b += kThreads) {
      s.part_mass[b] = 0.0;
      s.part_cnt[b] = 0;
    }
    __syncthreads();
    // Warp w adds to histogram copy w % kCopies (less contention on the crowded bins).
    const int copy = int(threadIdx.x >> 5) % kCopies * kBins;
    // kSearchBatch elements a thread per trip, their loads first; a warp none of whose lanes
    // holds a candidate of this level (most warps below level 0) skips the bin aggregation.
    for (int base = lo; base < hi; base += kSearchBatch * kThreads) {
      uint32_t keys[kSearchBatch];
#pragma unroll
      for (int u = 0; u < kSearchBatch; ++u) {
        const int j = base + u * kThreads + int(threadIdx.x);
        keys[u] = j < hi ? Key(row[j]) : 0u;  // key 0 is never a candidate (thr >= 0)
      }
#pragma unroll
      for (int u = 0; u < kSearchBatch; ++u) {
        const int j = base + u * kThreads + int(threadIdx.x);
        const uint32_t k = keys[u];
        int b = -1;
        double x = 0.0;
        if (k > c.thr && ((k ^ prefix) & hi_mask) == 0) {
          b = int((k >> shift) & 0xffu);
          x = kCount ? 1.0 : double(w[j]);
        }
        if (__ballot_sync(0xffffffffu, b >= 0) == 0) continue;
        // Lanes of one bin add once, through their lowest lane.
        const unsigned peers = __match_any_sync(0xffffffffu, b);
        const bool leader = b >= 0 && int(threadIdx.x & 31) == __ffs(peers) - 1;
        if (kCount) {
          if (leader) {
            atomicAdd(&s.part_cnt[copy + b], __popc(peers));
            atomicAdd(&s.part_mass[copy + b], double(__popc(peers)));
          }
        } else {
          s.stage[threadIdx.x] = x;
          __syncwarp();
          if (leader) {
            const int warp0 = int(threadIdx.x & ~31u);
            double sum = 0.0;
            for (unsigned r = peers; r != 0; r &= r - 1) sum += s.stage[warp0 + __ffs(r) - 1];
            atomicAdd(&s.part_cnt[copy + b], __popc(peers));
            atomicAdd(&s.part_mass[copy + b], sum);
          }
          __syncwarp();
        }
      }
    }
    __syncthreads();
    for (int b = threadIdx.x; b < kBins; b += kThreads) {
      double m2 = 0.0;
      int c2 = 0;
      for (int i = 0; i < kCopies; ++i) {
        m2 += s.part_mass[i * kBins + b];
        c2 += s.part_cnt[i * kBins + b];
      }
      s.mass[b] = m2;
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
      bool any = false;
      for (int i = 0; i < 8; ++i) {
        const int b = kBins - 1 - 8 * lane - i;
        sum += s.gmass[b];
        any |= s.gcnt[b] > 0;
      }
      double incl = sum;
      for (int o = 1; o < 32; o <<= 1) {
        const double y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
      }
      const double excl = incl - sum;
      const double rem = target - before;
      int hit = -1;
      double acc = excl, hit_acc = 0.0;
      for (int i = 0; i < 8 && hit < 0; ++i) {
        const int b = kBins - 1 - 8 * lane - i;
        if (s.gcnt[b] > 0 && acc + s.gmass[b] >= rem) {
          hit = b;
          hit_acc = acc;
        }
        acc += s.gmass[b];
      }
      const unsigned hits = __ballot_sync(0xffffffffu, hit >= 0);
      if (hits != 0) {
        if (lane == __ffs(hits) - 1) {
          s.hit_bin = hit;
          s.hit_before = hit_acc;
          s.fallback = false;
        }
      } else {
        // Unreached (rounding): the lowest non-empty bin, i.e. the last candidate.
        const unsigned nonempty = __ballot_sync(0xffffffffu, any);
        if (lane == 31 - __clz(nonempty)) {
          int low = -1;
          double a = excl, low_acc = 0.0;
          for (int i = 0; i < 8; ++i) {
            const int b = kBins - 1 - 8 * lane - i;
            if (s.gcnt[b] > 0) {
              low = b;
              low_acc = a;
            }
            a += s.gmass[b];
          }
          s.hit_bin = low;
          s.hit_before = low_acc;
          s.fallback = true;
        }
      }
    }
    __syncthreads();
    const int b = s.hit_bin;
    prefix |= uint32_t(b) << shift;
    before += s.hit_before;
    fallback |= s.fallback;
    group = s.gcnt[b];
    __syncthreads();  // the histograms are cleared next
  }
  Found f{prefix, group, 0, before};
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
  return f;
}

// The id of the `index`-th (by id) element of the row whose key is `key`, or n if there is
// none; this CTA holds row[lo, hi). All threads of the cluster.
__device__ int NthWithKey(const float* row, int lo, int hi, int n, uint32_t key, int index,
                          Smem& s) {
  if (index == 0) {
    int first = n;
    for (int j = lo + int(threadIdx.x); j < hi; j += kThreads) {
      if (Key(row[j]) == key) {
        first = j;
        break;
      }
    }
    return ClusterMinInt(first, s);
  }
  // The CTA whose slice holds the element scans it in id order; the others answer n.
  int mine = 0;
  for (int j = lo + int(threadIdx.x); j < hi; j += kThreads) mine += Key(row[j]) == key ? 1 : 0;
  const int local = index - ClusterExclusiveCount(mine, s);
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan;
  if (threadIdx.x == 0) s.token = n;
  __syncthreads();
  if (local >= 0 && local < mine) {
    int base = 0;
    for (int start = lo; start < hi && base <= local; start += kThreads) {
      const int j = start + int(threadIdx.x);
      const int flag = j < hi && Key(row[j]) == key ? 1 : 0;
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

// Grid: one cluster of 1-8 CTAs a row (SampleRowsCuda picks the size); CTA r of a cluster holds
// the row's slice r.
__global__ void __launch_bounds__(kThreads)
    SampleRowsKernel(const float* logits, int n, const SampleRowSpec* specs, float* weights,
                     int32_t* tokens) {
  __shared__ Smem s;
  cg::cluster_group cl = cg::this_cluster();
  const int i = int(blockIdx.x / cl.num_blocks());
  const int rank = int(cl.block_rank());
  const SampleRowSpec sp = specs[i];
  const float* row = logits + size_t(sp.row) * size_t(n);
  const int slice = (n / int(cl.num_blocks()) + 4) / 4 * 4;  // a multiple of 4: aligned slices
  const int lo = min(n, rank * slice), hi = min(n, lo + slice);

  // Arg-max: the largest (key, -id).
  const uint64_t best = ClusterMax(ThreadArgMax(row, lo, hi), s);
  const int top = int(~uint32_t(best & 0xffffffffu));
  const float m = FromKey(uint32_t(best >> 32));
  if (sp.temperature == 0.0f || sp.top_k == 1 || !isfinite(m)) {
    if (rank == 0 && threadIdx.x == 0) tokens[i] = top;
    return;
  }
  const float t = sp.temperature;
  float* w = weights + size_t(i) * size_t(n);

  Cands c{0u, 0, 0.0f};
  if (sp.top_k > 0 && sp.top_k < n) {
    const Found f = Search<true>(row, nullptr, lo, hi, c, m, t, double(sp.top_k), s);
    c = Cands{f.key, f.index + 1, Weight(FromKey(f.key), m, t)};
  }
  // Weights of the candidates, and their total.
  double part = 0.0;
  for (int j = lo + int(threadIdx.x); j < hi; j += kThreads) {
    const float l = row[j];
    if (Key(l) <= c.thr) continue;
    const float x = Weight(l, m, t);
    w[j] = x;
    part += x;
  }
  double total = ClusterSum(part, s) + double(c.take) * double(c.w_thr);
  if (sp.top_p < 1.0f) {
    const Found f = Search<false>(row, w, lo, hi, c, m, t, double(sp.top_p) * total, s);
    c = Cands{f.key, f.index + 1, Weight(FromKey(f.key), m, t)};
    total = f.before + double(c.take) * double(c.w_thr);
  }
  const Found f = Search<false>(row, w, lo, hi, c, m, t, sp.u * total, s);
  const int id = NthWithKey(row, lo, hi, n, f.key, f.index, s);
  if (rank == 0 && threadIdx.x == 0) tokens[i] = id < n ? id : top;
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
  // CTAs a row: the largest power of two <= kMaxCluster that keeps every row's cluster in one
  // wave (a CTA an SM). At vocab 151,936 and T 1, top_p 0.9 (H200): 1 row 780 -> 144 us with 8
  // CTAs; 64 rows at 8 CTAs (4 waves) made greedy 22.7 -> 34.0 us, hence fewer there.
  int cluster = kMaxCluster;
  while (cluster > 1 && int64_t(p.num_rows) * cluster > MultiprocessorCount()) cluster /= 2;
  // An ordinary launch (no PDL): the kernel reads the logits the step just wrote.
  return CudaStatus(LaunchKernel(SampleRowsKernel, dim3(unsigned(p.num_rows * cluster)),
                                 dim3(kThreads), 0, stream, LaunchOptions{cluster, false}, p.logits,
                                 p.vocab, p.specs, p.weights, p.tokens),
                    "launching SampleRowsKernel");
}

}  // namespace resa::cuda
