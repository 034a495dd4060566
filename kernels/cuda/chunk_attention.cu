// Dense causal attention of query chunks over the paged bf16 cache (prefill and ReSA
// rectification): three kernels with one contract, plus the split merge.
//  * ChunkKernelWgmma and ChunkKernelWgmmaWs (sm_90, the default there): Hopper warpgroup MMA,
//    all warpgroups loading (cp.async), or a producer warpgroup (TMA, or cp.async when the pool's
//    extent is unknown) feeding two or three consumers; described above them.
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
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/wgmma.cuh"

namespace resa::cuda {
namespace {

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

// Keys per K/V tile and tiles in the ring, by consumer warpgroups: with two, 128-key tiles
// (S = Q K^T as m64n128: fewer shared-memory bytes per MMA, half the barriers and rescales per
// key) in 3 stages; with three, registers allow 64-key tiles (4 stages).
__host__ __device__ constexpr int WgTileKeys(int nwg) { return nwg == 2 ? 128 : 64; }
__host__ __device__ constexpr int WgStages(int nwg) { return nwg == 2 ? 3 : 4; }

struct ChunkPlan {
  Impl impl = Impl::kMmaSync;
  int row_tile = kBM;  // rows per CTA
  int row_tiles = 0;
  int num_splits = 1;
  size_t o_offset = 0, lse_offset = 0, bytes = 0;
};

struct ChunkArgs {
  // TMA maps of the K and V pools (wgmma kernels, when `tma`): 3-D, (head_dim, 16 * hkv rows,
  // num_pages), box (64, 16, 1): one 64-dim plane of one (page, KV head), 2 KB, landing in the
  // 128-byte swizzled layout wgmma reads. Kernels take ChunkArgs as a __grid_constant__
  // parameter so the maps have a generic address.
  CUtensorMap map_k, map_v;
  ChunkAttentionParams p;
  int group;
  int num_splits;
  float scale_log2;
  float* ws_o;    // [num_splits][total_rows][num_heads][head_dim]
  float* ws_lse;  // [num_splits][total_rows][num_heads], natural log
  bool tma;       // K/V tiles by TMA (else cp.async)
  bool pingpong;  // warp-specialised kernels: consumer warpgroups issue their MMAs in turn
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

// ---------------------------------------------------------------------------------------------
// The Hopper kernels (sm_90a): the same contract on warpgroup MMA (wgmma).
//
// Rows are split over warpgroups of 64. Q, K and V live in shared memory in the 128-byte
// swizzled layout wgmma reads (wgmma.cuh): S = Q K^T takes both operands from shared memory;
// O += P V takes P from registers (the S accumulators, rounded to bf16) and V as an MN-major
// operand, so V needs no transpose. Within a warpgroup the MMAs of tile t + 1's scores and tile
// t's P V are in flight together, and the softmax of tile t + 1 runs while P V executes; O is
// rescaled once P V has landed (WgRows::Step). Two kernels feed that loop:
//  * ChunkKernelWgmma<D, NWG>: NWG warpgroups that all load and compute, a cp.async ring of
//    WgStages tiles and one CTA barrier per tile;
//  * ChunkKernelWgmmaWs<D, NC, kTma>: NC consumer warpgroups (2: 128 rows; 3: 192 rows, TMA
//    only) and a producer warpgroup (FlashAttention-3's warp specialisation). Full / empty
//    mbarriers per stage replace the CTA barrier, so a consumer waits only for its data, never for
//    the other consumer; setmaxnreg moves the producer's registers to the consumers.
// The warp-specialised kernel's producer copies K/V tiles by TMA (kTma: one warp, a copy a lane
// per (page, plane) of K and V, WarpLoadKvTma) when the caller gives the pool's extent
// (PagedKvCuda::num_pages), else by cp.async from all its threads (WgLoadKv); same bytes in
// shared memory either way. The all-loading kernel stays on cp.async: with the TMA issue in
// its loop (every thread waiting on the stage's mbarrier, warp 0 issuing) ptxas spilled at
// the 168 registers of three warpgroups (and at 255 with two).

template <int D>
constexpr int WgSmemBytes(int nwg) {
  return 64 * nwg * D * 2 + WgStages(nwg) * 2 * WgTileKeys(nwg) * D * 2 + 1024;  // + alignment
}

// Byte offset of (row, 16-byte chunk ch) in a swizzled [nrows][D] operand.
__device__ __forceinline__ uint32_t WgSwz(int row, int ch, int nrows) {
  return uint32_t((ch / 8) * nrows * 128 + row * 128 + (((ch % 8) ^ (row & 7)) << 4));
}

// cp.async of the CTA's BM query rows into `sq` by threads [tid, nthreads) of the copy.
template <int D, int BM>
__device__ __forceinline__ void WgLoadQ(const ChunkArgs& a, const ChunkCta& cta, uint32_t sq,
                                        int tid, int nthreads) {
  constexpr int CH = D / 8;
  const ChunkAttentionParams& p = a.p;
  for (int idx = tid; idx < BM * CH; idx += nthreads) {
    const int row = idx / CH, ch = idx % CH;
    const int i = cta.i_lo + row;
    const int r = i / a.group;
    const bool ok = r < cta.rows;
    const size_t src =
        ok ? (size_t(cta.row_off + r) * p.num_heads + cta.h * a.group + i % a.group) * D + ch * 8
           : 0;
    detail::CpAsync16(sq + WgSwz(row, ch, BM), p.q + src, ok ? 16 : 0);
  }
}

// Page id q of key tile t of BN keys (`past` past the CTA's keys).
template <int BN>
__device__ __forceinline__ int32_t TilePage(const ChunkCta& cta, int t, int q, int32_t past = 0) {
  const int32_t pos = t * BN + q * kPageTokens;
  return pos < cta.key_end ? cta.table[pos / kPageTokens] : past;
}

// cp.async of key tile t (K into sk, V into sv; zero past the tile's last key) by threads
// [tid, nthreads) of the copy, the tile's page ids read from shared memory (ids[q] =
// TilePage(cta, t, q)) or from the page table itself (ids = table + t * BN / 16). The
// all-loading kernel stages each tile's ids in shared memory steps ahead, one thread an id:
// read from the table by every copying thread after the tile's barrier, each copy first waited
// for its id's round trip, in every warp at once.
template <int D, int BN>
__device__ __forceinline__ void WgLoadKv(const ChunkArgs& a, const ChunkCta& cta, int t,
                                         const int32_t* ids, uint32_t sk, uint32_t sv, int tid,
                                         int nthreads) {
  constexpr int CH = D / 8;
  const ChunkAttentionParams& p = a.p;
  for (int idx = tid; idx < BN * CH; idx += nthreads) {
    const int row = idx / CH, ch = idx % CH;
    const int32_t pos = t * BN + row;
    const bool ok = pos < cta.key_end;
    const size_t src =
        ok ? ((size_t(ids[row / kPageTokens]) * p.kv.num_kv_heads + cta.h) * kPageTokens +
              pos % kPageTokens) *
                     D +
                 ch * 8
           : 0;
    detail::CpAsync16(sk + WgSwz(row, ch, BN), p.kv.k + src, ok ? 16 : 0);
    detail::CpAsync16(sv + WgSwz(row, ch, BN), p.kv.v + src, ok ? 16 : 0);
  }
}

// TMA copies of a key tile: (BN / 16 pages) x (D / 64 planes) x (K, V), one a lane of the
// issuing warp (at most 32).
template <int D, int BN>
__host__ __device__ constexpr int TmaCopies() {
  return BN / kPageTokens * (D / 64) * 2;
}

// Page id of lane `lane`'s copy of key tile t: num_pages (outside the map: zeros) past the
// CTA's keys, 0 for lanes without a copy.
template <int D, int BN>
__device__ __forceinline__ int32_t TmaLanePage(const ChunkArgs& a, const ChunkCta& cta, int t,
                                               int lane) {
  const int q = lane / (2 * (D / 64));
  return q < BN / kPageTokens ? TilePage<BN>(cta, t, q, a.p.kv.num_pages) : 0;
}

// The page of key tile t that holds the CTA's last key when that key is not its page's last
// slot (the page's later slots may hold anything, NaN included), or -1.
template <int BN>
__device__ __forceinline__ int TmaTailPage(const ChunkCta& cta, int t) {
  return cta.key_end % kPageTokens != 0 && cta.key_end < (t + 1) * BN
             ? (cta.key_end - t * BN) / kPageTokens
             : -1;
}

// cp.async of V page qp of a key tile (TmaTailPage) into sv by threads [idx0, nthreads): its
// valid rows, zeros after. K's stale rows may come by TMA (their scores are masked to -inf), V's
// may not: a masked key's zero weight times NaN is NaN.
template <int D, int BN>
__device__ __forceinline__ void CopyTailV(const ChunkArgs& a, const ChunkCta& cta, int qp,
                                          uint32_t sv, int idx0, int nthreads) {
  constexpr int CH = D / 8;
  const ChunkAttentionParams& p = a.p;
  const int32_t tail = cta.key_end % kPageTokens;
  const size_t base =
      (size_t(cta.table[cta.key_end / kPageTokens]) * p.kv.num_kv_heads + cta.h) * kPageTokens;
  for (int idx = idx0; idx < kPageTokens * CH; idx += nthreads) {
    const int row = idx / CH, ch = idx % CH;
    const bool ok = row < tail;
    detail::CpAsync16(sv + WgSwz(qp * kPageTokens + row, ch, BN),
                      p.kv.v + (ok ? (base + row) * D + ch * 8 : 0), ok ? 16 : 0);
  }
}

// Key tile t into (sk, sv) by the 32 lanes of one warp, completing on `bar` (count 1: lane 0's
// arrival, which expects the TMA bytes). Every (page, plane) of K and of V is one TMA of lane l
// (page id `page`, TmaLanePage, loaded ahead); pages past the CTA's keys read outside the map
// and land as zeros. V of tail page qp (>= 0) is left to CopyTailV, whose copies must have
// arrived on `bar` (CpAsyncArriveInc) before this call.
template <int D, int BN>
__device__ __forceinline__ void WarpLoadKvTma(const ChunkArgs& a, const ChunkCta& cta, int t,
                                              int32_t page, uint32_t sk, uint32_t sv, uint32_t bar,
                                              int lane, int qp) {
  constexpr int kPlanes = D / 64;
  constexpr uint32_t kCopyBytes = kPageTokens * 128;
  if (lane == 0) {
    detail::MbarArriveExpectTx(bar,
                               uint32_t(TmaCopies<D, BN>() - (qp >= 0 ? kPlanes : 0)) * kCopyBytes);
  }
  __syncwarp();
  const int q = lane / (2 * kPlanes), plane = (lane / 2) % kPlanes;
  const uint32_t off = uint32_t(plane * BN + q * kPageTokens) * 128;
  if (lane < TmaCopies<D, BN>()) {
    if (lane % 2 == 0) {
      detail::TmaLoad3d(sk + off, &a.map_k, plane * 64, cta.h * kPageTokens, page, bar);
    } else if (q != qp) {
      detail::TmaLoad3d(sv + off, &a.map_v, plane * 64, cta.h * kPageTokens, page, bar);
    }
  }
}

// One warpgroup's 64 rows of a CTA of BM rows: O accumulators, running max / sum, and the
// MMA + softmax steps over BN-key tiles. Thread `tid` (of the consumer warpgroups) holds rows
// row0 and row0 + 8 (e / 2 = 0, 1 of the accumulator layout).
template <int D, int BM, int BN>
struct WgRows {
  using PFrag = uint32_t[BN / 16][4];  // P as bf16 A fragments, one per 16 keys
  float o[D / 2];
  float m[2], l[2];
  int32_t limit[2];  // keys each row sees
  int wg, c, row0;

  __device__ __forceinline__ WgRows(const ChunkArgs& a, const ChunkCta& cta, int tid) {
    wg = tid / 128;
    c = tid % 4;
    row0 = cta.i_lo + 64 * wg + 16 * ((tid % 128) / 32) + (tid % 32) / 4;
    limit[0] = cta.limit_of(row0 / a.group);
    limit[1] = cta.limit_of((row0 + 8) / a.group);
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.0f;
  }

  // S = Q K^T of this warpgroup's rows against the K tile at `sk`.
  __device__ __forceinline__ void IssueS(float (&s)[BN / 2], uint32_t sq, uint32_t sk) const {
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      const uint64_t da =
          detail::SmemDesc(sq + (ks / 4) * BM * 128 + wg * 64 * 128 + (ks % 4) * 32, 16, 1024);
      const uint64_t db = detail::SmemDesc(sk + (ks / 4) * BN * 128 + (ks % 4) * 32, 16, 1024);
      if constexpr (BN == 128) {
        detail::WgmmaSS64x128(s, da, db, ks > 0);
      } else {
        detail::WgmmaSS64x64(s, da, db, ks > 0);
      }
    }
    detail::WgmmaCommit();
  }

  // O += P V over the V tile at `sv`.
  __device__ __forceinline__ void IssuePv(const PFrag& pf, uint32_t sv) {
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      const uint64_t db = detail::SmemDesc(sv + kk * 16 * 128, BN * 128, 1024);
      if constexpr (D == 128) {
        detail::WgmmaRS64x128(o, pf[kk], db);
      } else {
        detail::WgmmaRS64x64(o, pf[kk], db);
      }
    }
    detail::WgmmaCommit();
  }

  // Scores of tile t -> P, running max / sum; corr = the rescale of O. A tile t >= t1 (the
  // loop's last look-ahead) is masked whole: a no-op on m, l and O. m is kept in scaled log2
  // units; the raw scores' maxima give it because scale > 0. P is 2^(s * scale_log2 - m), one
  // FFMA and one MUFU a score; maxima and sums run as four independent chains per row.
  __device__ __forceinline__ void Softmax(float (&s)[BN / 2], int t, const ChunkCta& cta,
                                          float scale_log2, PFrag& pf, float (&corr)[2]) {
    if (t >= cta.t1 || t * BN + BN - 1 >= cta.min_limit) {  // warp-uniform
      const int lim[2] = {t >= cta.t1 ? 0 : limit[0] - t * BN, t >= cta.t1 ? 0 : limit[1] - t * BN};
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (8 * j + 2 * c + (e & 1) >= lim[e >> 1]) s[4 * j + e] = -INFINITY;
        }
      }
    }
    float mx[2][4];
#pragma unroll
    for (int e = 0; e < 2; ++e) mx[e][0] = mx[e][1] = mx[e][2] = mx[e][3] = -INFINITY;
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) mx[e >> 1][j & 3] = fmaxf(mx[e >> 1][j & 3], s[4 * j + e]);
    }
    float m_use[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const float tile_max = fmaxf(fmaxf(mx[e][0], mx[e][1]), fmaxf(mx[e][2], mx[e][3]));
      const float m_new = fmaxf(m[e], detail::QuadMax(tile_max) * scale_log2);
      m_use[e] = m_new == -INFINITY ? 0.0f : m_new;
      corr[e] = detail::Exp2Approx(m[e] - m_use[e]);
      m[e] = m_new;
    }
    float ls[2][4] = {};
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[4 * j + e] = detail::Exp2Approx(fmaf(s[4 * j + e], scale_log2, -m_use[e >> 1]));
        ls[e >> 1][j & 3] += s[4 * j + e];
      }
    }
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      l[e] = l[e] * corr[e] + ((ls[e][0] + ls[e][1]) + (ls[e][2] + ls[e][3]));
    }
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      pf[kk][0] = detail::PackBf16(s[8 * kk + 0], s[8 * kk + 1]);
      pf[kk][1] = detail::PackBf16(s[8 * kk + 2], s[8 * kk + 3]);
      pf[kk][2] = detail::PackBf16(s[8 * kk + 4], s[8 * kk + 5]);
      pf[kk][3] = detail::PackBf16(s[8 * kk + 6], s[8 * kk + 7]);
    }
  }

  // Tile t0's scores and P (into pf); its K tile has landed.
  __device__ __forceinline__ void First(float (&s)[BN / 2], uint32_t sq, uint32_t sk,
                                        const ChunkCta& cta, float scale_log2, PFrag& pf) {
    float corr[2];
    detail::WgmmaFence();
    IssueS(s, sq, sk);
    detail::WgmmaWait<0>();
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) detail::FenceOperand(s[i]);
    Softmax(s, cta.t0, cta, scale_log2, pf, corr);
  }

  // P V of tile t (P in pc, V at sv) and the scores of tile t + 1 (K at sk_next, P into pn);
  // turn(false) runs before the MMAs are issued, turn(true) right after.
  // The last tile also scores a stale stage as tile t1, which the softmax masks whole: no branch
  // inside the MMA pipeline (ptxas serialises wgmma otherwise). Returns once P V has landed,
  // before O is rescaled (Rescale), so the caller can release the stage first.
  template <typename Turn>
  __device__ __forceinline__ void Step(float (&s)[BN / 2], int t, uint32_t sq, uint32_t sk_next,
                                       uint32_t sv, const ChunkCta& cta, float scale_log2,
                                       PFrag& pc, PFrag& pn, float (&corr)[2], Turn&& turn) {
    turn(false);
    detail::WgmmaFence();
    IssueS(s, sq, sk_next);
    IssuePv(pc, sv);
    turn(true);
    detail::WgmmaWait<1>();  // the scores of tile t + 1
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) detail::FenceOperand(s[i]);
    Softmax(s, t + 1, cta, scale_log2, pn, corr);
    detail::WgmmaWait<0>();  // P V of tile t
#pragma unroll
    for (int i = 0; i < D / 2; ++i) detail::FenceOperand(o[i]);
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
#pragma unroll
      for (int w = 0; w < 4; ++w) detail::FenceOperand(pc[kk][w]);
    }
  }

  // Tiles t0 .. t1 - 1 through step(t, pc, pn) (P V of tile t from pc, the next tile's P into
  // pn), two per trip with the P buffers trading roles, so no register copy feeds an MMA.
  template <typename StepFn>
  __device__ __forceinline__ static void ForTiles(int t0, int t1, PFrag& pa, PFrag& pb,
                                                  StepFn&& step) {
    for (int t = t0; t < t1; t += 2) {
      step(t, pa, pb);
      if (t + 1 < t1) step(t + 1, pb, pa);
    }
  }

  __device__ __forceinline__ void Rescale(const float (&corr)[2]) {
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      o[4 * j + 0] *= corr[0], o[4 * j + 1] *= corr[0];
      o[4 * j + 2] *= corr[1], o[4 * j + 3] *= corr[1];
    }
  }

  __device__ __forceinline__ void Store(const ChunkArgs& a, const ChunkCta& cta) const {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const float lsum = detail::QuadSum(l[e]);
      const int i = row0 + 8 * e;
      if (i / a.group >= cta.rows) continue;
      const float inv = lsum > 0.0f ? 1.0f / lsum : 0.0f;
      const ChunkDst dst = ChunkRowDst(a, cta.row_off, cta.h, i);
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        *reinterpret_cast<float2*>(dst.o + j * 8 + 2 * c) =
            make_float2(o[4 * j + 2 * e] * inv, o[4 * j + 2 * e + 1] * inv);
      }
      if (c == 0 && dst.lse != nullptr) {
        *dst.lse = lsum > 0.0f ? (m[e] + log2f(lsum)) * kLn2 : -INFINITY;
      }
    }
  }
};

template <int D, int NWG>
__global__ void __launch_bounds__(NWG * 128, 1) ChunkKernelWgmma(const ChunkArgs a) {
#if RESA_HAVE_WGMMA
  constexpr int BM = 64 * NWG;
  constexpr int BN = WgTileKeys(NWG);
  constexpr int kStages = WgStages(NWG);
  constexpr uint32_t kTileBytes = BN * D * 2;  // one K or V tile
  constexpr int kThreadsCta = NWG * 128;
  extern __shared__ uint8_t smem_wg[];
  const uint32_t sq = (detail::SmemAddr(smem_wg) + 1023) & ~1023u;
  const uint32_t sk = sq + BM * D * 2;            // [stage] K tiles
  const uint32_t sv = sk + kStages * kTileBytes;  // [stage] V tiles

  const ChunkCta cta = LocateChunkCta(a, BM, BN);
  if (cta.empty) return;
  const int t0 = cta.t0, t1 = cta.t1;
  const int tid = threadIdx.x;
  WgRows<D, BM, BN> w(a, cta, tid);
  // Page ids of tile t in slot (t - t0) % kStages. Threads q < kPages hold tile t + 1's id
  // (loaded a step earlier) while tile t's are in use.
  constexpr int kPages = BN / kPageTokens;
  __shared__ int32_t tile_pages[kStages][kPages];
  int32_t next_page = 0;
  auto load_kv = [&](int t) {
    const int slot = (t - t0) % kStages;
    WgLoadKv<D, BN>(a, cta, t, tile_pages[slot], sk + slot * kTileBytes, sv + slot * kTileBytes,
                    tid, kThreadsCta);
  };

  if (t0 < t1) {
    WgLoadQ<D, BM>(a, cta, sq, tid, kThreadsCta);
    for (int i = tid; i < kStages * kPages; i += kThreadsCta) {
      tile_pages[i / kPages][i % kPages] = TilePage<BN>(cta, t0 + i / kPages, i % kPages);
    }
    if (tid < kPages) next_page = TilePage<BN>(cta, t0 + kStages, tid);
    __syncthreads();
    // Tiles t0 .. t0 + stages - 2 in flight (Q with the first), one commit group each.
#pragma unroll
    for (int st = 0; st < kStages - 1; ++st) {
      if (t0 + st < t1) load_kv(t0 + st);
      detail::CpAsyncCommit();
    }
    detail::CpAsyncWait<kStages - 2>();
    detail::FenceProxyAsync();
    __syncthreads();

    float s[BN / 2];
    uint32_t pa[BN / 16][4], pb[BN / 16][4];  // P of the tile in P V and of the next one
    w.First(s, sq, sk, cta, a.scale_log2, pa);
    auto step = [&](int t, uint32_t(&pc)[BN / 16][4], uint32_t(&pn)[BN / 16][4]) {
      // Tile t + 1 has landed (only younger groups may be pending); after the barrier every
      // warpgroup is also done with tile t - 1, whose stage now takes tile t + stages - 1.
      detail::CpAsyncWait<kStages - 3>();
      detail::FenceProxyAsync();
      __syncthreads();
      if (t + kStages - 1 < t1) load_kv(t + kStages - 1);
      detail::CpAsyncCommit();
      // Tile t's slot (its copies went out stages - 1 steps ago) takes tile t + stages's ids;
      // the next step's barrier publishes them.
      if (tid < kPages) {
        tile_pages[(t - t0) % kStages][tid] = next_page;
        next_page = TilePage<BN>(cta, t + kStages + 1, tid);
      }
      float corr[2];
      w.Step(s, t, sq, sk + (t + 1 - t0) % kStages * kTileBytes,
             sv + (t - t0) % kStages * kTileBytes, cta, a.scale_log2, pc, pn, corr, [](bool) {});
      w.Rescale(corr);
    };
    WgRows<D, BM, BN>::ForTiles(t0, t1, pa, pb, step);
  }
  w.Store(a, cta);
#else
  __trap();  // launched only on sm_90 devices (UseWgmma)
#endif
}

// Registers per thread after setmaxnreg, by consumer warpgroups: two (384 threads, 168 at
// launch): 128 * 40 + 256 * 232 <= 64K; three (512 threads, 128 at launch; TMA only, whose
// producer needs few): 128 * 32 + 384 * 160 = 64K.
__host__ __device__ constexpr int WsProducerRegs(int nc) { return nc == 2 ? 40 : 32; }
__host__ __device__ constexpr int WsConsumerRegs(int nc) { return nc == 2 ? 232 : 160; }

template <int D, int NC, bool kTma>
__global__ void __launch_bounds__((NC + 1) * 128, 1)
    ChunkKernelWgmmaWs(const __grid_constant__ ChunkArgs a) {
#if RESA_HAVE_WGMMA
  static_assert(NC == 2 || (NC == 3 && kTma), "three consumers only beside a TMA producer");
  constexpr int BM = 64 * NC;
  constexpr int BN = WgTileKeys(NC);
  constexpr int kStages = WgStages(NC);
  constexpr int kConsumers = NC * 128;
  constexpr uint32_t kTileBytes = BN * D * 2;
  extern __shared__ uint8_t smem_ws[];
  // full: the producer's copies of the stage landed (TMA: lane 0 of the producer's first warp
  // arrives and the copies complete their bytes; cp.async: 128 arrivals); empty: every consumer
  // warpgroup is done with it (NC * 128 arrivals).
  __shared__ __align__(8) uint64_t full_bar[kStages], empty_bar[kStages];
  const uint32_t sq = (detail::SmemAddr(smem_ws) + 1023) & ~1023u;
  const uint32_t sk = sq + BM * D * 2;
  const uint32_t sv = sk + kStages * kTileBytes;

  const ChunkCta cta = LocateChunkCta(a, BM, BN);
  if (cta.empty) return;
  const int t0 = cta.t0, t1 = cta.t1;
  const int tid = threadIdx.x;
  if (tid == 0) {
    for (int st = 0; st < kStages; ++st) {
      detail::MbarInit(detail::SmemAddr(&full_bar[st]), kTma ? 1 : 128);
      detail::MbarInit(detail::SmemAddr(&empty_bar[st]), kConsumers);
    }
  }
  __syncthreads();

  if (tid >= kConsumers) {  // the producer warpgroup: Q with tile t0, then a tile per free stage
    detail::SetMaxRegsDec<WsProducerRegs(NC)>();
    const int ptid = tid - kConsumers;
    if constexpr (kTma) {
      // Q by the whole warpgroup (its copies arrive on stage 0's barrier, counted up front; the
      // named barrier orders them before lane 0's arrival), then one warp issues the tiles: a
      // TMA a lane, the lane's page id loaded a tile ahead.
      if (t0 < t1) {
        WgLoadQ<D, BM>(a, cta, sq, ptid, 128);
        detail::CpAsyncArriveInc(detail::SmemAddr(&full_bar[0]));
      }
      detail::NamedBarrierSync(1, 128);
      if (ptid >= 32) {
        detail::CpAsyncWait<0>();
        return;
      }
      if (ptid == 0) {
        detail::PrefetchTensorMap(&a.map_k);
        detail::PrefetchTensorMap(&a.map_v);
      }
      int32_t page = TmaLanePage<D, BN>(a, cta, t0, ptid);
      for (int n = 0; n < t1 - t0; ++n) {
        const int st = n % kStages;
        if (n >= kStages) detail::MbarWait(detail::SmemAddr(&empty_bar[st]), (n / kStages - 1) & 1);
        const int t = t0 + n;
        const uint32_t bar = detail::SmemAddr(&full_bar[st]);
        const int qp = TmaTailPage<BN>(cta, t);
        if (qp >= 0) {
          CopyTailV<D, BN>(a, cta, qp, sv + st * kTileBytes, ptid, 32);
          detail::CpAsyncArriveInc(bar);
          __syncwarp();
        }
        WarpLoadKvTma<D, BN>(a, cta, t, page, sk + st * kTileBytes, sv + st * kTileBytes, bar, ptid,
                             qp);
        page = TmaLanePage<D, BN>(a, cta, t + 1, ptid);
      }
      detail::CpAsyncWait<0>();
    } else {
      if (t0 < t1) WgLoadQ<D, BM>(a, cta, sq, ptid, 128);
      for (int n = 0; n < t1 - t0; ++n) {
        const int st = n % kStages;
        if (n >= kStages) detail::MbarWait(detail::SmemAddr(&empty_bar[st]), (n / kStages - 1) & 1);
        // Page ids straight from the table: staging them in shared memory a tile ahead (as the
        // all-loading kernel does) behind a named barrier of the producer warpgroup per tile made
        // this kernel 3-7% slower (7B b8 256K 3105 -> 3240 us).
        const int t = t0 + n;
        WgLoadKv<D, BN>(a, cta, t, cta.table + t * (BN / kPageTokens), sk + st * kTileBytes,
                        sv + st * kTileBytes, ptid, 128);
        detail::CpAsyncArriveNoinc(detail::SmemAddr(&full_bar[st]));
      }
      detail::CpAsyncWait<0>();
    }
    return;
  }

  detail::SetMaxRegsInc<WsConsumerRegs(NC)>();
  WgRows<D, BM, BN> w(a, cta, tid);
  // Ping-pong (ChunkArgs::pingpong): the consumer warpgroups issue their MMAs in turn, warpgroup
  // wg after named barrier 2 + wg, which warpgroup wg - 1 (cyclically) arrives on once it has
  // issued, so one's softmax runs while another's MMAs do. The last one opens the first round
  // and skips its arrival after its last tile: every barrier gets as many arrivals as waits.
  const int wg = tid / 128;
  if (a.pingpong && wg == NC - 1 && t0 < t1) detail::NamedBarrierArrive(2, 256);
  if (t0 < t1) {
    float s[BN / 2];
    uint32_t pa[BN / 16][4], pb[BN / 16][4];
    detail::MbarWait(detail::SmemAddr(&full_bar[0]), 0);
    detail::FenceProxyAsync();
    w.First(s, sq, sk, cta, a.scale_log2, pa);
    auto step = [&](int t, uint32_t(&pc)[BN / 16][4], uint32_t(&pn)[BN / 16][4]) {
      const int n = t - t0;
      if (t + 1 < t1) {
        detail::MbarWait(detail::SmemAddr(&full_bar[(n + 1) % kStages]), ((n + 1) / kStages) & 1);
        detail::FenceProxyAsync();
      }
      float corr[2];
      w.Step(s, t, sq, sk + (n + 1) % kStages * kTileBytes, sv + n % kStages * kTileBytes, cta,
             a.scale_log2, pc, pn, corr, [&](bool issued) {
               if (!a.pingpong) return;
               if (!issued) {
                 detail::NamedBarrierSync(2 + wg, 256);
               } else if (wg != NC - 1 || t + 1 < t1) {
                 detail::NamedBarrierArrive(2 + (wg + 1) % NC, 256);
               }
             });
      detail::MbarArrive(detail::SmemAddr(&empty_bar[n % kStages]));
      w.Rescale(corr);
    };
    WgRows<D, BM, BN>::ForTiles(t0, t1, pa, pb, step);
  }
  w.Store(a, cta);
#else
  __trap();  // launched only on sm_90 devices (UseWgmma)
#endif
}

// Folds num_splits partials of every (row, head) into out / lse_ln. One CTA of
// kMergeWarps(num_splits) warps per (row, head) w: every warp reads all splits' lse (lane s
// takes s, s + 32, ...) and reduces the maximum and the denominator, then warp j sums the
// weighted O of splits j, j + W, ... with 8 splits' 16-byte slices in flight (lane l owns dims
// [l * D / 32, (l + 1) * D / 32)), and the CTA adds the W partial sums in warp order. A
// (row, head) thus waits on about four memory round trips; the first version (one warp walking
// every split for each 32 dims, one load at a time) took tens of microseconds at 66 splits.
// Empty splits (lse = -inf, O never written) weigh nothing; all empty gives O = 0, lse = -inf.
constexpr int kMergeMaxWarps = 8;
constexpr int kMergeSplitsPerWarp = 8;

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
  float mx = -INFINITY;
  for (int s = lane; s < num_splits; s += 32) mx = fmaxf(mx, ws_lse[size_t(s) * n + w]);
  for (int o = 16; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  float den = 0.0f;
  if (mx != -INFINITY) {
    for (int s = lane; s < num_splits; s += 32) {
      const float lse = ws_lse[size_t(s) * n + w];
      den += lse == -INFINITY ? 0.0f : expf(lse - mx);
    }
    for (int o = 16; o > 0; o /= 2) den += __shfl_xor_sync(0xffffffffu, den, o);
  }
  float acc[V] = {};
  if (den > 0.0f) {
    for (int s0 = warp; s0 < num_splits; s0 += warps * kMergeSplitsPerWarp) {
      float lse[kMergeSplitsPerWarp];
      Vec o[kMergeSplitsPerWarp] = {};
#pragma unroll
      for (int k = 0; k < kMergeSplitsPerWarp; ++k) {
        const int s = s0 + k * warps;
        lse[k] = -INFINITY;
        if (s < num_splits) {
          lse[k] = ws_lse[size_t(s) * n + w];
          o[k] = reinterpret_cast<const Vec*>(ws_o + (size_t(s) * n + w) * D)[lane];
        }
      }
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

// cuTensorMapEncodeTiled from the driver (no link against libcuda), or null.
PFN_cuTensorMapEncodeTiled_v12000 TensorMapEncoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q;
    const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000,
                                                             cudaEnableDefault, &q);
    return err == cudaSuccess && q == cudaDriverEntryPointSuccess
               ? reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f)
               : nullptr;
  }();
  return fn;
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
  a.tma = (plan.impl == Impl::kWgmmaWs || plan.impl == Impl::kWgmmaWs3) && p.kv.num_pages > 0 &&
          TmaChunkEnabled();
  if (a.tma) {
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
      err = a.tma ? (d64 ? launch(ChunkKernelWgmmaWs<64, 2, true>, 384, WgSmemBytes<64>(2),
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
