// Dense causal attention of query chunks over the paged bf16 cache (prefill and ReSA
// rectification): three kernels with one contract, plus the split merge.
//  * ChunkKernelWgmma and ChunkKernelWgmmaWs (sm_90, the default there; chunk_wgmma.cuh):
//    Hopper warpgroup MMA, all warpgroups loading (cp.async), or a producer warpgroup (TMA, or
//    cp.async when the pool's extent is unknown) feeding two or three consumers.
//  * ChunkKernelMma (any device; the baseline resa-bench times): FlashAttention-2 style on
//    mma.m16n8k16.
//
// Rows of a chunk are (query token r, head jj of the group) pairs, i = r * group + jj, so a CTA's
// row tile holds all query heads of its tokens and every K/V tile it loads serves the whole GQA
// group. Grid: x = split of the key range, y = row tile (latest rows first: they see the most
// keys), z = (chunk, KV head). The mma.sync kernel: 4 warps x 32 rows (two m16 tiles per warp,
// so every K/V fragment read from shared memory feeds two MMAs); K/V tiles of 64 tokens (32 at
// d = 128) double-buffered in shared memory by cp.async (zero-filled past the tile's last key),
// stored with a 16-byte XOR swizzle so ldmatrix is conflict-free; S = Q K^T and O += P V use
// ldmatrix(.trans) fragments; P is reused from the S accumulators. Splits write (O, lse)
// partials that MergeSplitsKernel folds; with one split the CTA writes the output directly.
#include <cuda.h>  // CUtensorMap (the encoder comes from the driver at run time)
#include <cudaTypedefs.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <type_traits>

#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/chunk_common.cuh"
#include "kernels/cuda/chunk_wgmma.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/tensor_map.h"

namespace resa::cuda {
namespace {

using chunk::ChunkArgs;
using chunk::ChunkCta;
using chunk::ChunkDst;
using chunk::ChunkKernelWgmma;
using chunk::ChunkKernelWgmmaWs;
using chunk::ChunkRowDst;
using chunk::LocateChunkCta;
using chunk::WgSmemBytes;
using chunk::WgStages;
using chunk::WgTileKeys;
using detail::kLn2;
using detail::kLog2e;

constexpr int kMT = 2;             // m16 tiles per warp
constexpr int kBM = 4 * 16 * kMT;  // rows per CTA
constexpr int kBN = 64;            // keys per K/V tile for head_dim 64 (32 for 128: registers)
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kCtasPerSm = 2;
constexpr int kMinTilesPerSplit = 4;

// The kernel a chunk runs on: the mma.sync kernel (kBM rows, 2 CTAs per SM), the wgmma kernel
// with 2 or 3 warpgroups (64 rows each, 1 CTA per SM), or the warp-specialised wgmma kernel (2
// or 3 consumer warpgroups + a producer, 1 CTA per SM; 3 only with TMA).
enum class Impl { kMmaSync, kWgmma2, kWgmma3, kWgmmaWs, kWgmmaWs3 };

struct ChunkPlan {
  Impl impl = Impl::kMmaSync;
  int row_tile = kBM;  // rows per CTA
  int row_tiles = 0;
  int num_splits = 1;
  bool tma = false;  // the warp-specialised kernel's producer copies K/V tiles by TMA
  size_t o_offset = 0, lse_offset = 0, bytes = 0;
};

size_t AlignUp(size_t x) { return (x + 255) & ~size_t(255); }

// RESA_CUDA_CHUNK_KERNEL at start: mma, wgmma or ws pins that kernel family or kernel; anything
// else (or unset) leaves kAuto.
ChunkKernel EnvChunkKernel() {
  static const ChunkKernel k = [] {
    const char* v = std::getenv("RESA_CUDA_CHUNK_KERNEL");
    const std::string_view s = v == nullptr ? "" : v;
    return s == "mma"     ? ChunkKernel::kMmaSync
           : s == "wgmma" ? ChunkKernel::kWgmma
           : s == "ws"    ? ChunkKernel::kWgmmaWs
                          : ChunkKernel::kAuto;
  }();
  return k;
}

// Whether the warp-specialised kernels' consumers issue their MMAs in turn (ping-pong): on,
// RESA_CUDA_CHUNK_PINGPONG=0 at start turns it off (A/B runs). Kernel bench, same call, off ->
// on: 7B rectification 2-4% faster (256K b8 2203 -> 2154 us, b1 260 -> 254, 32K b1 47.2 ->
// 45.2), 16K prefill 1-2%; 1.5B rectification within +-1%.
bool PingPongChunk() {
  static const bool on = [] {
    const char* v = std::getenv("RESA_CUDA_CHUNK_PINGPONG");
    return v == nullptr || std::string_view(v) != "0";
  }();
  return on;
}

// RESA_CUDA_CHUNK_TMA=0 at start: the warp-specialised kernel copies K/V tiles with cp.async
// even when the pool's extent is known, and PlanChunk keeps its cp.async rule (A/B runs).
bool TmaChunkEnabled() {
  static const bool on = [] {
    const char* v = std::getenv("RESA_CUDA_CHUNK_TMA");
    return v == nullptr || std::string_view(v) != "0";
  }();
  return on;
}

std::atomic<bool>& WgmmaChunkFlag() {
  static std::atomic<bool> flag{EnvChunkKernel() != ChunkKernel::kMmaSync};
  return flag;
}

// What kAuto runs on sm_90 when WgmmaChunkDefault(): kAuto (the rule in PlanChunk), or with
// RESA_CUDA_CHUNK_KERNEL=wgmma / ws one wgmma kernel for every shape (A/B runs).
ChunkKernel WgmmaVariant() {
  const ChunkKernel k = EnvChunkKernel();
  return k == ChunkKernel::kMmaSync ? ChunkKernel::kAuto : k;
}

bool UseWgmma(ChunkKernel kernel) {
  if (kernel != ChunkKernel::kAuto) return kernel != ChunkKernel::kMmaSync;
  return WgmmaChunkFlag().load(std::memory_order_relaxed) && ComputeCapabilityMajor() == 9;
}

ChunkPlan PlanChunk(const ChunkAttentionParams& p) {
  ChunkPlan plan;
  const int hkv = p.kv.num_kv_heads > 0 ? p.kv.num_kv_heads : 1;
  const int group = p.num_heads / hkv;
  const int64_t chunk_rows = int64_t(p.max_rows) * group;
  int ctas_per_sm = kCtasPerSm, tile_keys = kBN;
  if (UseWgmma(p.kernel)) {
    // With TMA (the pool's extent known): the warp-specialised kernel, three consumer
    // warpgroups (192-row tiles) when they pad fewer rows than two (a 32-token chunk of a 6-head
    // group, 192 rows), else two (a 7-head group's chunk, 224 rows; long prompts). Against run
    // 19's choice: 1.5B rectification 256K b1 134.5 -> 113.6 us, 7B b8 3195 -> 2277 us, 16K
    // prefill 1.19-1.28x. Without TMA (RESA_CUDA_CHUNK_TMA=0): three all-loading warpgroups (12
    // warps an SM: ~10% more TFLOP/s than two) unless they pad more than 5% rows beyond two's,
    // else warp-specialised on cp.async (11-13% faster than two all-loading at 7B shapes; three
    // consumers beside a cp.async producer would spill: 160 registers).
    const ChunkKernel k = p.kernel == ChunkKernel::kAuto ? WgmmaVariant() : p.kernel;
    const int64_t pad2 = (chunk_rows + 127) / 128 * 128, pad3 = (chunk_rows + 191) / 192 * 192;
    const bool three = pad3 * 20 <= pad2 * 21;  // of the all-loading kernels
    const bool tma = p.kv.num_pages > 0 && TmaChunkEnabled();
    const Impl ws = tma && pad3 < pad2 ? Impl::kWgmmaWs3 : Impl::kWgmmaWs;
    plan.impl = k == ChunkKernel::kWgmmaWs ? ws
                : k == ChunkKernel::kWgmma ? (three ? Impl::kWgmma3 : Impl::kWgmma2)
                : tma                      ? ws
                : three                    ? Impl::kWgmma3
                                           : Impl::kWgmmaWs;
    plan.tma = tma && (plan.impl == Impl::kWgmmaWs || plan.impl == Impl::kWgmmaWs3);
    const bool rows192 = plan.impl == Impl::kWgmma3 || plan.impl == Impl::kWgmmaWs3;
    plan.row_tile = rows192 ? 192 : 128;
    ctas_per_sm = 1;
    tile_keys = WgTileKeys(rows192 ? 3 : 2);
  }
  plan.row_tiles = int((chunk_rows + plan.row_tile - 1) / plan.row_tile);
  const int64_t ctas = int64_t(p.num_chunks) * hkv * plan.row_tiles;
  const int64_t kv_tiles = (int64_t(p.max_num_keys) + tile_keys - 1) / tile_keys;
  int64_t splits = p.num_splits;
  if (splits <= 0) {
    // Round down: ctas * splits <= one wave of ctas_per_sm CTAs per SM.
    const int64_t target = int64_t(MultiprocessorCount()) * ctas_per_sm;
    splits = ctas >= target || ctas == 0 ? 1 : target / ctas;
    const int64_t cap = (kv_tiles + kMinTilesPerSplit - 1) / kMinTilesPerSplit;
    splits = splits > cap ? cap : splits;
    splits = splits < 1 ? 1 : splits;
  }
  plan.num_splits = int(splits);
  if (plan.num_splits > 1) {  // partials after the shared counter region (attention_cuda.h)
    const size_t n = size_t(plan.num_splits) * p.total_rows * p.num_heads;
    plan.o_offset = kWorkspaceCounterBytes;
    plan.lse_offset = plan.o_offset + AlignUp(n * p.kv.head_dim * sizeof(float));
    plan.bytes = plan.lse_offset + AlignUp(n * sizeof(float));
  }
  return plan;
}

template <int D>
__host__ __device__ constexpr int TileN() {
  return D == 128 ? 32 : kBN;
}

template <int D>
constexpr int ChunkSmemBytes() {
  return (kBM + 4 * TileN<D>()) * D * 2;  // Q + 2 x (K, V), bf16
}

// Shared-memory element offset of (row, 16-byte chunk ch) in a [rows][D] bf16 tile.
template <int D>
__device__ __forceinline__ int Swz(int row, int ch) {
  return row * D + ((ch ^ (row & 7)) * 8);
}

template <int D>
__global__ void __launch_bounds__(kThreads, kCtasPerSm) ChunkKernelMma(const ChunkArgs a) {
  constexpr int CH = D / 8;  // 16-byte chunks per row
  constexpr int BN = TileN<D>();
  extern __shared__ uint4 smem_raw[];
  __nv_bfloat16* sq = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* sk = sq + kBM * D;  // [2][BN][D]
  __nv_bfloat16* sv = sk + 2 * BN * D;

  const ChunkAttentionParams& p = a.p;
  const int hkv = p.kv.num_kv_heads, g = a.group;
  const ChunkCta cta = LocateChunkCta(a, kBM, BN);
  if (cta.empty) return;
  const int h = cta.h, i_lo = cta.i_lo, t0 = cta.t0, t1 = cta.t1;
  const int32_t row_off = cta.row_off, rows = cta.rows, key_end = cta.key_end;
  const int32_t min_limit = cta.min_limit;
  const int32_t* table = cta.table;
  auto limit_of = [&](int r) { return cta.limit_of(r); };
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, c = lane % 4;

  // The 2 * kMT rows of this lane's accumulators (m-tile mt, half e) and the keys they see.
  constexpr int NR = 2 * kMT;
  auto row_of = [&](int k) {
    return i_lo + warp * 16 * kMT + (k / 2) * 16 + lane / 4 + 8 * (k % 2);
  };
  int32_t limit[NR];
#pragma unroll
  for (int k = 0; k < NR; ++k) limit[k] = limit_of(row_of(k) / g);

  float o[kMT][D / 8][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[mt][n][0] = o[mt][n][1] = o[mt][n][2] = o[mt][n][3] = 0.0f;
  }
  float m[NR], l[NR];
#pragma unroll
  for (int k = 0; k < NR; ++k) m[k] = -INFINITY, l[k] = 0.0f;

  auto load_kv = [&](int t, int buf) {
    for (int idx = tid; idx < BN * CH; idx += kThreads) {
      const int row = idx / CH, ch = idx % CH;
      const int32_t pos = t * BN + row;
      const bool ok = pos < key_end;
      size_t src = 0;
      if (ok) {
        const int32_t page = table[pos / kPageTokens];
        src = ((size_t(page) * hkv + h) * kPageTokens + pos % kPageTokens) * D + ch * 8;
      }
      const int dst = buf * BN * D + Swz<D>(row, ch);
      detail::CpAsync16(detail::SmemAddr(sk + dst), p.kv.k + src, ok ? 16 : 0);
      detail::CpAsync16(detail::SmemAddr(sv + dst), p.kv.v + src, ok ? 16 : 0);
    }
  };

  if (t0 < t1) {
    for (int idx = tid; idx < kBM * CH; idx += kThreads) {
      const int row = idx / CH, ch = idx % CH;
      const int i = i_lo + row;
      const int r = i / g;
      const bool ok = r < rows;
      const size_t src = ok ? (size_t(row_off + r) * p.num_heads + h * g + i % g) * D + ch * 8 : 0;
      detail::CpAsync16(detail::SmemAddr(sq + Swz<D>(row, ch)), p.q + src, ok ? 16 : 0);
    }
    load_kv(t0, 0);
    detail::CpAsyncCommit();

    for (int t = t0; t < t1; ++t) {
      const int buf = (t - t0) & 1;
      if (t + 1 < t1) load_kv(t + 1, buf ^ 1);
      detail::CpAsyncCommit();
      detail::CpAsyncWait<1>();
      __syncthreads();
      const __nv_bfloat16* kt = sk + buf * BN * D;
      const __nv_bfloat16* vt = sv + buf * BN * D;

      float s[kMT][BN / 8][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
        for (int n = 0; n < BN / 8; ++n)
          s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.0f;
      }
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) {
        uint32_t qf[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          const int row = warp * 16 * kMT + mt * 16 + ((lane / 8) % 2) * 8 + lane % 8;
          detail::LdMatrixX4(qf[mt], detail::SmemAddr(sq + Swz<D>(row, 2 * ks + lane / 16)));
        }
#pragma unroll
        for (int j = 0; j < BN / 16; ++j) {
          uint32_t kb[4];
          const int row = 16 * j + (lane / 16) * 8 + lane % 8;
          detail::LdMatrixX4(kb, detail::SmemAddr(kt + Swz<D>(row, 2 * ks + (lane / 8) % 2)));
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            detail::Mma16816(s[mt][2 * j], qf[mt][0], qf[mt][1], qf[mt][2], qf[mt][3], kb[0],
                             kb[1]);
            detail::Mma16816(s[mt][2 * j + 1], qf[mt][0], qf[mt][1], qf[mt][2], qf[mt][3], kb[2],
                             kb[3]);
          }
        }
      }

      // Scale to log2 units; mask keys past each row's causal limit (only near the diagonal).
      const bool need_mask = t * BN + BN - 1 >= min_limit;
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float x = s[mt][n][e] * a.scale_log2;
            if (need_mask && t * BN + n * 8 + 2 * c + (e & 1) >= limit[2 * mt + (e >> 1)]) {
              x = -INFINITY;
            }
            s[mt][n][e] = x;
            tile_max[e >> 1] = fmaxf(tile_max[e >> 1], x);
          }
        }
        float corr[2], m_use[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int k = 2 * mt + e;
          const float m_new = fmaxf(m[k], detail::QuadMax(tile_max[e]));
          m_use[e] = m_new == -INFINITY ? 0.0f : m_new;
          corr[e] = exp2f(m[k] - m_use[e]);
          m[k] = m_new;
          l[k] *= corr[e];
        }
#pragma unroll
        for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            s[mt][n][e] = exp2f(s[mt][n][e] - m_use[e >> 1]);
            l[2 * mt + (e >> 1)] += s[mt][n][e];
          }
        }
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
          o[mt][n][0] *= corr[0], o[mt][n][1] *= corr[0];
          o[mt][n][2] *= corr[1], o[mt][n][3] *= corr[1];
        }
      }
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        uint32_t pa[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          pa[mt][0] = detail::PackBf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
          pa[mt][1] = detail::PackBf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
          pa[mt][2] = detail::PackBf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
          pa[mt][3] = detail::PackBf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int j = 0; j < D / 16; ++j) {
          uint32_t vb[4];
          const int row = 16 * kk + ((lane / 8) % 2) * 8 + lane % 8;
          detail::LdMatrixX4Trans(vb, detail::SmemAddr(vt + Swz<D>(row, 2 * j + lane / 16)));
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            detail::Mma16816(o[mt][2 * j], pa[mt][0], pa[mt][1], pa[mt][2], pa[mt][3], vb[0],
                             vb[1]);
            detail::Mma16816(o[mt][2 * j + 1], pa[mt][0], pa[mt][1], pa[mt][2], pa[mt][3], vb[2],
                             vb[3]);
          }
        }
      }
      __syncthreads();  // the next iteration refills the buffer just read
    }
  }

#pragma unroll
  for (int k = 0; k < NR; ++k) {
    const float lsum = detail::QuadSum(l[k]);
    const int i = row_of(k);
    if (i / g >= rows) continue;
    const float inv = lsum > 0.0f ? 1.0f / lsum : 0.0f;
    const ChunkDst dst = ChunkRowDst(a, row_off, h, i);
    const int mt = k / 2, e = k % 2;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      *reinterpret_cast<float2*>(dst.o + n * 8 + 2 * c) =
          make_float2(o[mt][n][2 * e] * inv, o[mt][n][2 * e + 1] * inv);
    }
    if (c == 0 && dst.lse != nullptr)
      *dst.lse = lsum > 0.0f ? (m[k] + log2f(lsum)) * kLn2 : -INFINITY;
  }
}

// Folds num_splits partials of every (row, head) into out / lse_ln. One CTA of
// kMergeWarps(num_splits) warps per (row, head) w: every warp reads all splits' lse (lane s
// takes s, s + 32, ...) and reduces the maximum and the denominator, then warp j sums the
// weighted O of splits j, j + W, ... with 8 splits' 16-byte slices in flight (lane l owns dims
// [l * D / 32, (l + 1) * D / 32)), and the CTA adds the W partial sums in warp order. The lse of
// the first kMergeLsePerLane * 32 splits and each warp's first 8 slices are loaded together, before
// any arithmetic (one memory round trip for up to 64 splits at 8 warps); until run 48 the
// maximum, the denominator and the slices were three rounds of loads one after another (7.6 us
// a launch of a 32-token chunk at 1.5B 256K batch 1, 66 splits, against 6.1 now; ncu:
// docs/cuda_backend.md, run 48). The first version (one warp walking every split for each 32
// dims, one load at a time) took tens of microseconds at 66 splits. Empty splits (lse = -inf, O
// never written) weigh nothing; all empty gives O = 0, lse = -inf.
constexpr int kMergeMaxWarps = 8;
constexpr int kMergeSplitsPerWarp = 8;
constexpr int kMergeLsePerLane = 4;

int MergeWarps(int num_splits) {
  const int w = (num_splits + kMergeSplitsPerWarp - 1) / kMergeSplitsPerWarp;
  return w < 1 ? 1 : w > kMergeMaxWarps ? kMergeMaxWarps : w;
}

template <int D>
__global__ void __launch_bounds__(32 * kMergeMaxWarps)
    MergeSplitsKernel(const float* ws_o, const float* ws_lse, int num_splits, size_t n, float* out,
                      float* lse_ln) {
  constexpr int V = D / 32;  // dims a lane: 2 or 4
  using Vec = typename std::conditional<V == 4, float4, float2>::type;
  __shared__ float part[kMergeMaxWarps][D];
  const size_t w = blockIdx.x;
  const int lane = threadIdx.x, warp = threadIdx.y, warps = blockDim.y;
  // Warp `warp`'s splits warp + k warps of round s0 (lse -inf past the end).
  auto load_round = [&](int s0, float(&lse)[kMergeSplitsPerWarp], Vec(&o)[kMergeSplitsPerWarp]) {
#pragma unroll
    for (int k = 0; k < kMergeSplitsPerWarp; ++k) {
      const int s = s0 + k * warps;
      lse[k] = -INFINITY;
      if (s < num_splits) {
        lse[k] = ws_lse[size_t(s) * n + w];
        o[k] = reinterpret_cast<const Vec*>(ws_o + (size_t(s) * n + w) * D)[lane];
      }
    }
  };
  float lse[kMergeSplitsPerWarp];
  Vec o[kMergeSplitsPerWarp] = {};
  float lane_lse[kMergeLsePerLane];
#pragma unroll
  for (int q = 0; q < kMergeLsePerLane; ++q) {
    const int s = lane + 32 * q;
    lane_lse[q] = s < num_splits ? ws_lse[size_t(s) * n + w] : -INFINITY;
  }
  load_round(warp, lse, o);
  float mx = -INFINITY;
#pragma unroll
  for (int q = 0; q < kMergeLsePerLane; ++q) mx = fmaxf(mx, lane_lse[q]);
  for (int s = lane + 32 * kMergeLsePerLane; s < num_splits; s += 32) {
    mx = fmaxf(mx, ws_lse[size_t(s) * n + w]);
  }
  for (int off = 16; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  float den = 0.0f;
  if (mx != -INFINITY) {
#pragma unroll
    for (int q = 0; q < kMergeLsePerLane; ++q) {
      den += lane_lse[q] == -INFINITY ? 0.0f : expf(lane_lse[q] - mx);
    }
    for (int s = lane + 32 * kMergeLsePerLane; s < num_splits; s += 32) {
      const float l = ws_lse[size_t(s) * n + w];
      den += l == -INFINITY ? 0.0f : expf(l - mx);
    }
    for (int off = 16; off > 0; off /= 2) den += __shfl_xor_sync(0xffffffffu, den, off);
  }
  float acc[V] = {};
  if (den > 0.0f) {
    for (int s0 = warp; s0 < num_splits; s0 += warps * kMergeSplitsPerWarp) {
      if (s0 != warp) load_round(s0, lse, o);
#pragma unroll
      for (int k = 0; k < kMergeSplitsPerWarp; ++k) {
        if (lse[k] == -INFINITY) continue;
        const float e = expf(lse[k] - mx);
        const float* v = reinterpret_cast<const float*>(&o[k]);
#pragma unroll
        for (int j = 0; j < V; ++j) acc[j] = fmaf(e, v[j], acc[j]);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < V; ++j) part[warp][lane * V + j] = acc[j];
  __syncthreads();
  const int tid = warp * 32 + lane;
  for (int t = tid; t < D; t += 32 * warps) {  // fewer than D / 32 warps: a thread takes several
    float sum = 0.0f;
    for (int k = 0; k < warps; ++k) sum += part[k][t];
    out[w * D + t] = den > 0.0f ? sum / den : 0.0f;
  }
  if (tid == 0 && lse_ln != nullptr) lse_ln[w] = den > 0.0f ? mx + logf(den) : -INFINITY;
}

// The TMA maps of ChunkArgs over kv's K and V pools.
absl::Status EncodeKvMaps(const PagedKvCuda& kv, ChunkArgs& a) {
  const PFN_cuTensorMapEncodeTiled_v12000 encode = TensorMapEncoder();
  if (encode == nullptr) {
    return absl::FailedPreconditionError(
        "ChunkAttentionCuda: the driver has no cuTensorMapEncodeTiled (TMA); set "
        "RESA_CUDA_CHUNK_TMA=0");
  }
  const cuuint64_t dims[3] = {cuuint64_t(kv.head_dim), cuuint64_t(kPageTokens) * kv.num_kv_heads,
                              cuuint64_t(kv.num_pages)};
  const cuuint64_t strides[2] = {cuuint64_t(kv.head_dim) * 2, kv.page_elems() * 2};  // bytes
  const cuuint32_t box[3] = {64, kPageTokens, 1};
  const cuuint32_t elem_strides[3] = {1, 1, 1};
  for (auto [map, base] : {std::pair{&a.map_k, kv.k}, std::pair{&a.map_v, kv.v}}) {
    const CUresult r = encode(
        map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<__nv_bfloat16*>(base), dims, strides,
        box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
        CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
      return absl::InternalError(absl::StrCat("ChunkAttentionCuda: cuTensorMapEncodeTiled error ",
                                              int(r), " for a pool of ", kv.num_pages, " pages"));
    }
  }
  return absl::OkStatus();
}

absl::Status Validate(const ChunkAttentionParams& p) {
  if (p.kv.k == nullptr || p.kv.v == nullptr || p.q == nullptr || p.out == nullptr ||
      p.row_offsets == nullptr || p.page_tables == nullptr ||
      (p.first_num_keys == nullptr && p.row_num_keys == nullptr)) {
    return absl::InvalidArgumentError(
        "ChunkAttentionCuda: null k, v, q, out or chunk arrays (first_num_keys may be null only "
        "with row_num_keys)");
  }
  if (p.kv.head_dim != 64 && p.kv.head_dim != 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("ChunkAttentionCuda: head_dim ", p.kv.head_dim, " (supported: 64, 128)"));
  }
  if (!(p.scale > 0.0f) || std::isinf(p.scale)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ChunkAttentionCuda: scale ", p.scale, " (must be positive and finite)"));
  }
  if (p.kv.num_pages < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ChunkAttentionCuda: kv.num_pages ", p.kv.num_pages, " (0 = not given)"));
  }
  if (p.kv.num_kv_heads <= 0 || p.num_heads <= 0 || p.num_heads % p.kv.num_kv_heads != 0) {
    return absl::InvalidArgumentError(
        "ChunkAttentionCuda: num_heads not a multiple of num_kv_heads");
  }
  if (p.num_chunks <= 0 || int64_t(p.num_chunks) * p.kv.num_kv_heads > 65535 || p.max_rows <= 0 ||
      p.total_rows <= 0 || p.max_num_keys <= 0 || p.page_table_stride <= 0) {
    return absl::InvalidArgumentError(
        "ChunkAttentionCuda: bad num_chunks, max_rows, total_rows, max_num_keys or stride");
  }
  return absl::OkStatus();
}

}  // namespace

bool WgmmaChunkDefault() { return WgmmaChunkFlag().load(std::memory_order_relaxed); }
void SetWgmmaChunkDefault(bool on) { WgmmaChunkFlag().store(on, std::memory_order_relaxed); }

size_t ChunkAttentionWorkspaceBytes(const ChunkAttentionParams& p) { return PlanChunk(p).bytes; }
int ChunkAttentionRowTile(const ChunkAttentionParams& p) { return PlanChunk(p).row_tile; }

absl::Status ChunkAttentionCuda(const ChunkAttentionParams& p, cudaStream_t stream) {
  if (auto st = Validate(p); !st.ok()) return st;
  const ChunkPlan plan = PlanChunk(p);
  if (plan.impl != Impl::kMmaSync && ComputeCapabilityMajor() != 9) {  // kWgmma asked for
    return absl::FailedPreconditionError("ChunkAttentionCuda: the wgmma kernel needs sm_90");
  }
  if (plan.bytes > 0 && (p.workspace == nullptr || p.workspace_bytes < plan.bytes)) {
    return absl::InvalidArgumentError(absl::StrCat("ChunkAttentionCuda: workspace of ",
                                                   p.workspace_bytes, " bytes, need ", plan.bytes));
  }
  if (plan.row_tiles > 65535) {
    return absl::InvalidArgumentError("ChunkAttentionCuda: chunk too long (row tiles > 65535)");
  }
  ChunkArgs a;
  a.p = p;
  a.group = p.num_heads / p.kv.num_kv_heads;
  a.num_splits = plan.num_splits;
  a.scale_log2 = p.scale * kLog2e;
  a.ws_o = reinterpret_cast<float*>(static_cast<char*>(p.workspace) + plan.o_offset);
  a.ws_lse = reinterpret_cast<float*>(static_cast<char*>(p.workspace) + plan.lse_offset);
  if (plan.tma) {
    if (auto st = EncodeKvMaps(p.kv, a); !st.ok()) return st;
  }
  a.pingpong = PingPongChunk();
  const dim3 grid(plan.num_splits, plan.row_tiles, p.num_chunks * p.kv.num_kv_heads);
  // Chunks (rectification, prefill) run eagerly and measured slightly slower with PDL
  // (docs/cuda_backend.md), so the chunk kernels and the merge launch plainly: they start when
  // the kernel before them ends and need no griddepcontrol code.
  constexpr LaunchOptions kNoPdl{1, false};
  // One launch of `kernel` with `smem` dynamic bytes, raising its shared-memory limit once per
  // device (`done` is that kernel's flag).
  auto launch = [&](auto kernel, int threads, int smem, std::atomic<uint64_t>& done) {
    cudaError_t err = OncePerDevice(done, [&] {
      return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    });
    if (err == cudaSuccess) err = LaunchKernel(kernel, grid, threads, smem, stream, kNoPdl, a);
    return err;
  };
  static std::atomic<uint64_t> attr_done[12];
  const bool d64 = p.kv.head_dim == 64;
  cudaError_t err;
  switch (plan.impl) {
    case Impl::kWgmmaWs:
      err = plan.tma ? (d64 ? launch(ChunkKernelWgmmaWs<64, 2, true>, 384, WgSmemBytes<64>(2),
                                     attr_done[0])
                            : launch(ChunkKernelWgmmaWs<128, 2, true>, 384, WgSmemBytes<128>(2),
                                     attr_done[1]))
                     : (d64 ? launch(ChunkKernelWgmmaWs<64, 2, false>, 384, WgSmemBytes<64>(2),
                                     attr_done[8])
                            : launch(ChunkKernelWgmmaWs<128, 2, false>, 384, WgSmemBytes<128>(2),
                                     attr_done[9]));
      break;
    case Impl::kWgmmaWs3:  // planned only with TMA
      err = d64 ? launch(ChunkKernelWgmmaWs<64, 3, true>, 512, WgSmemBytes<64>(3), attr_done[10])
                : launch(ChunkKernelWgmmaWs<128, 3, true>, 512, WgSmemBytes<128>(3), attr_done[11]);
      break;
    case Impl::kWgmma3:
      err = d64 ? launch(ChunkKernelWgmma<64, 3>, 384, WgSmemBytes<64>(3), attr_done[2])
                : launch(ChunkKernelWgmma<128, 3>, 384, WgSmemBytes<128>(3), attr_done[3]);
      break;
    case Impl::kWgmma2:
      err = d64 ? launch(ChunkKernelWgmma<64, 2>, 256, WgSmemBytes<64>(2), attr_done[4])
                : launch(ChunkKernelWgmma<128, 2>, 256, WgSmemBytes<128>(2), attr_done[5]);
      break;
    default:
      err = d64 ? launch(ChunkKernelMma<64>, kThreads, ChunkSmemBytes<64>(), attr_done[6])
                : launch(ChunkKernelMma<128>, kThreads, ChunkSmemBytes<128>(), attr_done[7]);
      break;
  }
  if (auto st = CudaStatus(err, "launching ChunkKernel"); !st.ok()) return st;
  if (auto st = CheckLaunch("ChunkKernel"); !st.ok()) return st;
  if (plan.num_splits == 1) return absl::OkStatus();
  const size_t n = size_t(p.total_rows) * p.num_heads;
  const dim3 block(32, unsigned(MergeWarps(plan.num_splits)));
  auto merge = d64 ? MergeSplitsKernel<64> : MergeSplitsKernel<128>;
  return CudaStatus(LaunchKernel(merge, dim3(unsigned(n)), block, 0, stream, kNoPdl, a.ws_o,
                                 a.ws_lse, plan.num_splits, n, p.out, p.lse_ln),
                    "launching MergeSplitsKernel");
}

}  // namespace resa::cuda
