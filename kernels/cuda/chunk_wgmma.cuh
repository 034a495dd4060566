// The Hopper (sm_90a) chunk attention kernels, ChunkKernelWgmma and ChunkKernelWgmmaWs, with
// their loaders (cp.async, TMA) and the per-warpgroup MMA + softmax loop. Included by
// chunk_attention.cu only, which plans and launches them.
#pragma once

#include <cstdint>

#include "kernels/cuda/chunk_common.cuh"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace resa::cuda::chunk {

// Keys per K/V tile and tiles in the ring, by consumer warpgroups: with two, 128-key tiles
// (S = Q K^T as m64n128: fewer shared-memory bytes per MMA, half the barriers and rescales per
// key) in 3 stages; with three, registers allow 64-key tiles (4 stages).
__host__ __device__ constexpr int WgTileKeys(int nwg) { return nwg == 2 ? 128 : 64; }
__host__ __device__ constexpr int WgStages(int nwg) { return nwg == 2 ? 3 : 4; }

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

// The running max of a row stays until a tile's scores exceed it by more than this (log2 units):
// FlashAttention-4's conditional rescale. O, l and the LSE are the same quantities whatever max
// they are kept against (O / l and m + log2 l are exact in it); only fp32 rounding differs, and P
// <= 2^8 keeps its bf16 rounding relative. After a split's first tile nearly every tile keeps
// every row's max, so the O rescale between a tile's P V and the next MMA issue is skipped (a
// warp skips it when its 16 rows' corrections are all exactly 1). With the exact max a warp of
// random scores rescaled on most of a split's first 16 tiles and then on about 16 in t. H200,
// run 57, kernel bench, git HEAD's build and this in one call, two rounds, us: rectification
// 1.5B 32K b8 108.7 / 108.6 -> 106.7 / 106.5, 256K b1 108.6 / 108.5 -> 107.9 / 108.0, b8 880.9
// / 873.5 -> 856.9 / 867.1; 7B 32K b1 44.0 / 44.5 -> 43.7 / 43.2, 256K b8 2211 / 2188 -> 2192 /
// 2190; prefill 16K 1.5B 1446 / 1410 -> 1407 / 1401, 7B 3666 / 3602 -> 3561 / 3590 (every shape
// level or faster); worst error against the CPU twin over the chunk tests unchanged for O, lse
// 3.8e-6 -> 2.9e-6.
constexpr float kLazyRescaleLog2 = 8.0f;

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
      const float m_tile = detail::QuadMax(tile_max) * scale_log2;
      // Lazy rescale: the running max moves only when the tile's exceeds it by more than
      // kLazyRescaleLog2, so P stays <= 2^kLazyRescaleLog2 and corr is exactly 1 (Rescale skips).
      const float m_new = m_tile > m[e] + kLazyRescaleLog2 ? m_tile : m[e];
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

  // O *= corr; a warp whose rows' maxima all stood still (corr exactly 1) skips it (the same
  // bits: x * 1 = x), which with kLazyRescaleLog2 is nearly every tile after a split's first.
  // Run 20, with the exact max (most tiles at long contexts), kernel bench, same call, always ->
  // skipped: rectification 1.5B 256K b8 886 / 888 -> 837 / 864 us, b1 112.7 -> 109.9; 7B 256K
  // b8 2202 -> 2134, b1 252.5 -> 248.4; the all-loading kernel within +-1.5%.
  __device__ __forceinline__ void Rescale(const float (&corr)[2]) {
    if (__all_sync(0xffffffffu, corr[0] == 1.0f && corr[1] == 1.0f)) return;
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
        *dst.lse = lsum > 0.0f ? (m[e] + log2f(lsum)) * detail::kLn2 : -INFINITY;
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

}  // namespace resa::cuda::chunk
