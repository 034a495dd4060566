// Dense causal attention of query chunks over the paged bf16 cache (prefill and ReSA
// rectification), FlashAttention-2 style on mma.m16n8k16, plus the split merge.
//
// Rows of a chunk are (query token r, head jj of the group) pairs, i = r * group + jj, so a CTA's
// 64-row tile holds all query heads of ~64/group tokens and every K/V tile it loads serves the
// whole GQA group. Grid: x = split of the key range, y = row tile (latest rows first: they see
// the most keys), z = (chunk, KV head). 4 warps x 32 rows (two m16 tiles per warp, so every K/V
// fragment read from shared memory feeds two MMAs); K/V tiles of 64 tokens (4 pages) are
// double-buffered in shared memory by cp.async (zero-filled past the tile's last key), stored
// with a 16-byte XOR swizzle so ldmatrix is conflict-free. S = Q K^T and O += P V use
// ldmatrix(.trans) fragments; P is reused from the S accumulators. Splits write (O, lse) partials
// that MergeSplitsKernel folds; with one split the CTA writes the output directly.
#include <atomic>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch.h"

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

struct ChunkPlan {
  int row_tiles = 0;
  int num_splits = 1;
  size_t o_offset = 0, lse_offset = 0, bytes = 0;
};

struct ChunkArgs {
  ChunkAttentionParams p;
  int group;
  int num_splits;
  float scale_log2;
  float* ws_o;    // [num_splits][total_rows][num_heads][head_dim]
  float* ws_lse;  // [num_splits][total_rows][num_heads], natural log
};

size_t AlignUp(size_t x) { return (x + 255) & ~size_t(255); }

ChunkPlan PlanChunk(const ChunkAttentionParams& p) {
  ChunkPlan plan;
  const int hkv = p.kv.num_kv_heads > 0 ? p.kv.num_kv_heads : 1;
  const int group = p.num_heads / hkv;
  plan.row_tiles = int((int64_t(p.max_rows) * group + kBM - 1) / kBM);
  const int64_t ctas = int64_t(p.num_chunks) * hkv * plan.row_tiles;
  const int64_t kv_tiles = (int64_t(p.max_num_keys) + kBN - 1) / kBN;
  int64_t splits = p.num_splits;
  if (splits <= 0) {
    // Round down: ctas * splits <= one wave of kCtasPerSm CTAs per SM.
    const int64_t target = int64_t(MultiprocessorCount()) * kCtasPerSm;
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
__global__ void __launch_bounds__(kThreads, kCtasPerSm) ChunkKernel(const ChunkArgs a) {
  constexpr int CH = D / 8;  // 16-byte chunks per row
  constexpr int BN = TileN<D>();
  extern __shared__ uint4 smem_raw[];
  __nv_bfloat16* sq = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* sk = sq + kBM * D;  // [2][BN][D]
  __nv_bfloat16* sv = sk + 2 * BN * D;

  const ChunkAttentionParams& p = a.p;
  const int hkv = p.kv.num_kv_heads;
  const int g = a.group;
  const int chunk = blockIdx.z / hkv, h = blockIdx.z % hkv;
  const int tile = gridDim.y - 1 - blockIdx.y;
  const int32_t row_off = p.row_offsets[chunk];
  const int32_t rows = p.row_offsets[chunk + 1] - row_off;
  const int i_lo = tile * kBM;
  if (i_lo >= rows * g) return;
  const int r_lo = i_lo / g;
  const int r_hi = min(rows - 1, (i_lo + kBM - 1) / g);
  // Causal limit of chunk row r (clamped to the tile's rows); non-decreasing in r either way.
  const int32_t* row_keys = p.row_num_keys != nullptr ? p.row_num_keys + row_off : nullptr;
  const int32_t first = row_keys == nullptr ? p.first_num_keys[chunk] : 0;
  auto limit_of = [&](int r) { return row_keys == nullptr ? first + r : row_keys[min(r, r_hi)]; };
  const int32_t key_end = limit_of(r_hi);  // no row of the tile sees a key at or past this
  const int32_t min_limit = limit_of(r_lo);
  const int kv_tiles = (key_end + BN - 1) / BN;
  const int per_split = (kv_tiles + a.num_splits - 1) / a.num_splits;
  const int t0 = blockIdx.x * per_split;
  const int t1 = min(kv_tiles, t0 + per_split);
  const int32_t* table = p.page_tables + size_t(chunk) * p.page_table_stride;
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
    const float lse = lsum > 0.0f ? (m[k] + log2f(lsum)) * kLn2 : -INFINITY;
    float* dst_o = p.out;
    float* dst_lse = p.lse_ln;
    size_t row = size_t(row_off + i / g) * p.num_heads + h * g + i % g;
    if (a.num_splits > 1) {
      row += size_t(blockIdx.x) * p.total_rows * p.num_heads;
      dst_o = a.ws_o;
      dst_lse = a.ws_lse;
    }
    const int mt = k / 2, e = k % 2;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      *reinterpret_cast<float2*>(dst_o + row * D + n * 8 + 2 * c) =
          make_float2(o[mt][n][2 * e] * inv, o[mt][n][2 * e + 1] * inv);
    }
    if (c == 0 && dst_lse != nullptr) dst_lse[row] = lse;
  }
}

// Folds num_splits partials of every (row, head) into out / lse_ln; one warp per (row, head).
__global__ void MergeSplitsKernel(const float* ws_o, const float* ws_lse, int num_splits, size_t n,
                                  int head_dim, float* out, float* lse_ln) {
  const size_t w = (size_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= n) return;
  float mx = -INFINITY;
  for (int s = 0; s < num_splits; ++s) mx = fmaxf(mx, ws_lse[s * n + w]);
  float den = 0.0f;
  if (mx != -INFINITY) {
    for (int s = 0; s < num_splits; ++s) den += expf(ws_lse[s * n + w] - mx);
  }
  for (int d = lane; d < head_dim; d += 32) {
    float acc = 0.0f;
    if (den > 0.0f) {
      for (int s = 0; s < num_splits; ++s) {
        const float lse = ws_lse[s * n + w];
        if (lse != -INFINITY) acc += expf(lse - mx) * ws_o[(s * n + w) * head_dim + d];
      }
      acc /= den;
    }
    out[w * head_dim + d] = acc;
  }
  if (lane == 0 && lse_ln != nullptr) lse_ln[w] = den > 0.0f ? mx + logf(den) : -INFINITY;
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

size_t ChunkAttentionWorkspaceBytes(const ChunkAttentionParams& p) { return PlanChunk(p).bytes; }

absl::Status ChunkAttentionCuda(const ChunkAttentionParams& p, cudaStream_t stream) {
  if (auto st = Validate(p); !st.ok()) return st;
  const ChunkPlan plan = PlanChunk(p);
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
  const dim3 grid(plan.num_splits, plan.row_tiles, p.num_chunks * p.kv.num_kv_heads);
  static std::atomic<uint64_t> attr_done[2];
  // Chunks (rectification, prefill) run eagerly and measured slightly slower with PDL
  // (docs/cuda_backend.md), so both kernels launch plainly: they start when the kernel before
  // them ends and need no griddepcontrol code.
  constexpr LaunchOptions kNoPdl{1, false};
  cudaError_t err;
  if (p.kv.head_dim == 64) {
    constexpr int smem = ChunkSmemBytes<64>();
    err = OncePerDevice(attr_done[0], [] {
      return cudaFuncSetAttribute(ChunkKernel<64>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  smem);
    });
    if (err == cudaSuccess) {
      err = LaunchKernel(ChunkKernel<64>, grid, kThreads, smem, stream, kNoPdl, a);
    }
  } else {
    constexpr int smem = ChunkSmemBytes<128>();
    err = OncePerDevice(attr_done[1], [] {
      return cudaFuncSetAttribute(ChunkKernel<128>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  smem);
    });
    if (err == cudaSuccess) {
      err = LaunchKernel(ChunkKernel<128>, grid, kThreads, smem, stream, kNoPdl, a);
    }
  }
  if (auto st = CudaStatus(err, "launching ChunkKernel"); !st.ok()) return st;
  if (auto st = CheckLaunch("ChunkKernel"); !st.ok()) return st;
  if (plan.num_splits == 1) return absl::OkStatus();
  const size_t n = size_t(p.total_rows) * p.num_heads;
  const int threads = 256;
  const size_t blocks = (n * 32 + threads - 1) / threads;
  return CudaStatus(
      LaunchKernel(MergeSplitsKernel, dim3(unsigned(blocks)), dim3(threads), 0, stream, kNoPdl,
                   a.ws_o, a.ws_lse, plan.num_splits, n, p.kv.head_dim, p.out, p.lse_ln),
      "launching MergeSplitsKernel");
}

}  // namespace resa::cuda
