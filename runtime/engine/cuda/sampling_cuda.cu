#include <cub/block/block_scan.cuh>

#include <cmath>

#include "kernels/cuda/cuda_status.h"
#include "runtime/engine/cuda/sampling_cuda.h"

namespace resa::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kBins = 256;
constexpr int kCopies = 4;  // privatised histograms per block

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
  int hit_bin;
  double hit_before;
  bool fallback;
  int token;
};

// The first candidate (order: key desc, id asc) whose running weight sum (kCount: running
// count) reaches `target`; the last candidate if rounding leaves it unreached. All threads.
template <bool kCount>
__device__ Found Search(const float* row, const float* w, int n, const Cands& c, float m,
                        float t, double target, Smem& s) {
  uint32_t prefix = 0;
  double before = 0.0;
  bool fallback = false;
  int group = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    const uint32_t hi = shift == 24 ? 0u : (~0u << (shift + 8));
    for (int b = threadIdx.x; b < kCopies * kBins; b += kThreads) {
      s.part_mass[b] = 0.0;
      s.part_cnt[b] = 0;
    }
    __syncthreads();
    // Warp w adds to histogram copy w % kCopies (less contention on the crowded bins).
    const int copy = int(threadIdx.x >> 5) % kCopies * kBins;
    for (int base = 0; base < n; base += kThreads) {
      const int j = base + int(threadIdx.x);
      int b = -1;
      double x = 0.0;
      if (j < n) {
        const uint32_t k = Key(row[j]);
        if (k > c.thr && ((k ^ prefix) & hi) == 0) {
          b = int((k >> shift) & 0xffu);
          x = kCount ? 1.0 : double(w[j]);
        }
      }
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
    __syncthreads();
    for (int b = threadIdx.x; b < kBins; b += kThreads) {
      double m2 = 0.0;
      int c2 = 0;
      for (int i = 0; i < kCopies; ++i) {
        m2 += s.part_mass[i * kBins + b];
        c2 += s.part_cnt[i * kBins + b];
      }
      if (c.take > 0 && ((c.thr ^ prefix) & hi) == 0 && b == int((c.thr >> shift) & 0xffu)) {
        c2 += c.take;
        m2 += kCount ? double(c.take) : double(c.take) * double(c.w_thr);
      }
      s.mass[b] = m2;
      s.cnt[b] = c2;
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      // Lane l holds bins 255 - 8l down to 248 - 8l (descending key order).
      const int lane = threadIdx.x;
      double sum = 0.0;
      bool any = false;
      for (int i = 0; i < 8; ++i) {
        const int b = kBins - 1 - 8 * lane - i;
        sum += s.mass[b];
        any |= s.cnt[b] > 0;
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
        if (s.cnt[b] > 0 && acc + s.mass[b] >= rem) {
          hit = b;
          hit_acc = acc;
        }
        acc += s.mass[b];
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
            if (s.cnt[b] > 0) {
              low = b;
              low_acc = a;
            }
            a += s.mass[b];
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
    group = s.cnt[b];
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

// The id of the `index`-th (by id) element whose key is `key`. All threads.
__device__ int NthWithKey(const float* row, int n, uint32_t key, int index, Smem& s) {
  if (index == 0) {
    int first = n;
    for (int j = threadIdx.x; j < n; j += kThreads) {
      if (Key(row[j]) == key) {
        first = j;
        break;
      }
    }
    return BlockMinInt(first, s.redi);
  }
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan;
  if (threadIdx.x == 0) s.token = n;
  int base = 0;
  for (int start = 0; start < n; start += kThreads) {
    const int j = start + int(threadIdx.x);
    const int flag = j < n && Key(row[j]) == key ? 1 : 0;
    int excl = 0, total = 0;
    Scan(scan).ExclusiveSum(flag, excl, total);
    if (flag && base + excl == index) s.token = j;
    base += total;
    __syncthreads();  // scan storage reuse
    if (base > index) break;
  }
  __syncthreads();
  return s.token;
}

__global__ void __launch_bounds__(kThreads)
    SampleRowsKernel(const float* logits, int n, const SampleRowSpec* specs, float* weights,
                     int32_t* tokens) {
  __shared__ Smem s;
  const SampleRowSpec sp = specs[blockIdx.x];
  const float* row = logits + size_t(sp.row) * size_t(n);

  // Arg-max: the largest (key, -id).
  uint64_t best = 0;
  for (int j = threadIdx.x; j < n; j += kThreads) {
    const uint64_t x = (uint64_t(Key(row[j])) << 32) | uint64_t(~uint32_t(j));
    best = x > best ? x : best;
  }
  best = BlockMax(best, s.red64);
  const int top = int(~uint32_t(best & 0xffffffffu));
  const float m = FromKey(uint32_t(best >> 32));
  if (sp.temperature == 0.0f || sp.top_k == 1 || !isfinite(m)) {
    if (threadIdx.x == 0) tokens[blockIdx.x] = top;
    return;
  }
  const float t = sp.temperature;
  float* w = weights + size_t(blockIdx.x) * size_t(n);

  Cands c{0u, 0, 0.0f};
  if (sp.top_k > 0 && sp.top_k < n) {
    const Found f = Search<true>(row, nullptr, n, c, m, t, double(sp.top_k), s);
    c = Cands{f.key, f.index + 1, Weight(FromKey(f.key), m, t)};
  }
  // Weights of the candidates, and their total.
  double part = 0.0;
  for (int j = threadIdx.x; j < n; j += kThreads) {
    const float l = row[j];
    if (Key(l) <= c.thr) continue;
    const float x = Weight(l, m, t);
    w[j] = x;
    part += x;
  }
  double total = BlockSum(part, s.redf) + double(c.take) * double(c.w_thr);
  if (sp.top_p < 1.0f) {
    const Found f = Search<false>(row, w, n, c, m, t, double(sp.top_p) * total, s);
    c = Cands{f.key, f.index + 1, Weight(FromKey(f.key), m, t)};
    total = f.before + double(c.take) * double(c.w_thr);
  }
  const Found f = Search<false>(row, w, n, c, m, t, sp.u * total, s);
  const int id = NthWithKey(row, n, f.key, f.index, s);
  if (threadIdx.x == 0) tokens[blockIdx.x] = id < n ? id : top;
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
  SampleRowsKernel<<<p.num_rows, kThreads, 0, stream>>>(p.logits, p.vocab, p.specs, p.weights,
                                                         p.tokens);
  return CheckLaunch("SampleRowsKernel");
}

}  // namespace resa::cuda
