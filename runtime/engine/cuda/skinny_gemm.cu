#include <cuda.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/tensor_map.h"
#include "kernels/cuda/wgmma.cuh"
#include "runtime/core/status.h"
#include "runtime/engine/cuda/skinny_gemm.h"

namespace resa::cuda {
namespace {

using detail::SmemAddr;

// A unit of work: HALVES boxes of 64 weight rows (one for a plain output; the gate and the up
// rows of a SwiGLU output) x KSUB k slices of 64 (a 128-byte swizzled row of bf16 each), with the
// NT input rows' same k slices beside them (NT = 32 or 64: the MMA's N; rows past `rows` land as
// zeros). A stage of the shared-memory ring holds one unit; a tile is the 64 output rows.
constexpr int kBoxK = 64;
constexpr int kThreads = 256;  // warpgroup 0 multiplies, warpgroup 1's first thread copies
constexpr uint32_t kBoxBytes = 64 * kBoxK * 2;                 // 8 KB: 64 weight rows x 64 k
constexpr int kPartialFloats = 2 * 64 * SkinnyGemm::kMaxRows;  // a CTA's tile partial at most
constexpr size_t kRingBytes = 208 * 1024;  // the stages' budget (one CTA a multiprocessor)

enum SkinnyOut : int { kOutF32, kOutBf16, kOutSwiGlu };
constexpr int kDefaultKSub = 4;       // k slices a unit (SkinnyGemmParams::k_sub)
constexpr int kDefaultTileRows = 64;  // SkinnyGemmParams::tile_rows

template <int NT, int KSUB, int H>
__host__ __device__ constexpr uint32_t StageBytes() {
  return uint32_t(H * KSUB) * kBoxBytes + uint32_t(KSUB * NT) * kBoxK * 2;
}
template <int NT, int KSUB, int H>
__host__ __device__ constexpr int Stages() {
  return int(kRingBytes / StageBytes<NT, KSUB, H>()) < 16
             ? int(kRingBytes / StageBytes<NT, KSUB, H>())
             : 16;
}
template <int NT, int KSUB, int H>
constexpr size_t SmemBytes() {
  // + the 1024-byte alignment of the 128-byte swizzle
  return size_t(Stages<NT, KSUB, H>()) * StageBytes<NT, KSUB, H>() + 1024;
}

struct SkinnyArgs {
  CUtensorMap map_w, map_x;  // w [n][k], x [rows][k]: boxes of 64 k x 64 rows / NT rows
  int rows, n, tiles, ksteps, ctas;
  int64_t units;  // tiles x ksteps
  int up_row;     // the SwiGLU's up rows start here (gate rows at 0); else unused
  float* y;
  __nv_bfloat16* y_bf16;
  __nv_bfloat16* act;
  float4* partials;  // [ctas][kPartialFloats / 4]
  int* flags;        // [ctas]
};

__device__ __forceinline__ int64_t UnitBegin(const SkinnyArgs& a, int c) {
  return int64_t(c) * a.units / a.ctas;
}

__device__ __forceinline__ void StoreRelease(int* p, int v) {
  asm volatile("st.release.gpu.global.s32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ int LoadAcquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// First weight row of half h of tile t (H halves of 64 rows a tile).
template <int OUT, int H>
__device__ __forceinline__ int HalfRow(const SkinnyArgs& a, int t, int h) {
  if constexpr (OUT == kOutSwiGlu) return (h ? a.up_row : 0) + 64 * t;
  return 64 * (H * t + h);
}

template <int NT>
__device__ __forceinline__ void Mma(float (&d)[NT / 2], uint64_t da, uint64_t db, int accumulate) {
  if constexpr (NT == 32) {
    detail::WgmmaSS64x32(d, da, db, accumulate);
  } else {
    detail::WgmmaSS64x64(d, da, db, accumulate);
  }
}

// Grid: SkinnyArgs::ctas CTAs (at most one per multiprocessor, so all are resident together:
// an owner waits for CTAs after it). CTA c takes units [UnitBegin(c), UnitBegin(c + 1)) in
// (tile, k step) order: its first tile may begin in an earlier CTA, its last continue in later
// ones. The CTA holding a tile's first k step owns it: it adds the partial sums the later CTAs
// of the tile leave in `partials` (each CTA at most one: its first tile), in CTA order, and
// writes the output. Accumulators of m64nNT (wgmma.cuh): thread t of the consumer warpgroup holds
// weight rows 16 (t / 32) + (t % 32) / 4 + 8 (e / 2) of each half and input rows 8 j + 2 (t % 4)
// + e % 2 in acc[h][4 j + e].
template <int NT, int OUT, int KSUB, int H>
__global__ void __launch_bounds__(kThreads, 1)
    SkinnyGemmKernel(const __grid_constant__ SkinnyArgs a) {
#if RESA_HAVE_WGMMA
  static_assert(OUT != kOutSwiGlu || H == 2, "a SwiGLU tile is its gate and up halves");
  constexpr int S = Stages<NT, KSUB, H>();
  constexpr uint32_t kStage = StageBytes<NT, KSUB, H>();
  constexpr uint32_t kXOffset = uint32_t(H * KSUB) * kBoxBytes;
  constexpr uint32_t kXBox = uint32_t(NT) * kBoxK * 2;
  extern __shared__ uint8_t smem_raw[];
  __shared__ __align__(8) uint64_t full_bar[S], empty_bar[S];
  const uint32_t base = (SmemAddr(smem_raw) + 1023) & ~1023u;
  const int tid = threadIdx.x, c = blockIdx.x;
  const int64_t u0 = UnitBegin(a, c), u1 = UnitBegin(a, c + 1);
  if (tid == 0) {
    for (int st = 0; st < S; ++st) {
      detail::MbarInit(SmemAddr(&full_bar[st]), 1);
      detail::MbarInit(SmemAddr(&empty_bar[st]), 128);
    }
  }
  __syncthreads();

  if (tid >= 128) {  // the producer: one thread issues every copy
    if (tid == 128) {
      detail::PrefetchTensorMap(&a.map_w);
      detail::PrefetchTensorMap(&a.map_x);
      auto copy_w = [&](int64_t i) {
        const int64_t u = u0 + i;
        const int t = int(u / a.ksteps), k0 = int(u % a.ksteps) * KSUB * kBoxK;
        const uint32_t sw = base + uint32_t(i % S) * kStage;
        const uint32_t bar = SmemAddr(&full_bar[i % S]);
        detail::MbarArriveExpectTx(bar, kStage);
#pragma unroll
        for (int h = 0; h < H; ++h) {
#pragma unroll
          for (int q = 0; q < KSUB; ++q) {
            detail::TmaLoad2d(sw + uint32_t(h * KSUB + q) * kBoxBytes, &a.map_w, k0 + q * kBoxK,
                              HalfRow<OUT, H>(a, t, h), bar);
          }
        }
      };
      auto copy_x = [&](int64_t i) {
        const int k0 = int((u0 + i) % a.ksteps) * KSUB * kBoxK;
        const uint32_t sx = base + uint32_t(i % S) * kStage + kXOffset;
#pragma unroll
        for (int q = 0; q < KSUB; ++q) {
          detail::TmaLoad2d(sx + q * kXBox, &a.map_x, k0 + q * kBoxK, 0,
                            SmemAddr(&full_bar[i % S]));
        }
      };
      // The weights are constant: the first stages' copies go out before the wait, beside the
      // kernel before (programmatic dependent launch); x is that kernel's output.
      const int64_t nu = u1 - u0;
      const int64_t pre = nu < S ? nu : S;
      for (int64_t i = 0; i < pre; ++i) copy_w(i);
      detail::GridDependencyWait();
      detail::LaunchDependents();
      for (int64_t i = 0; i < pre; ++i) copy_x(i);
      for (int64_t i = pre; i < nu; ++i) {
        detail::MbarWait(SmemAddr(&empty_bar[i % S]), uint32_t(i / S - 1) & 1);
        copy_w(i);
        copy_x(i);
      }
    } else {
      detail::GridDependencyWait();
      detail::LaunchDependents();
    }
    return;
  }

  detail::GridDependencyWait();  // before any store: the kernel before may read y or partials
  detail::LaunchDependents();
  const int warp = tid / 32, lane = tid % 32;
  float acc[H][NT / 2];
  int64_t u = u0, i = 0;  // i: this CTA's unit count, the ring's position
  while (u < u1) {
    const int t = int(u / a.ksteps);
    const int64_t tile_begin = int64_t(t) * a.ksteps, tile_end = tile_begin + a.ksteps;
    const int64_t u_first = u, u_end = u1 < tile_end ? u1 : tile_end;
    for (; u < u_end; ++u, ++i) {
      detail::MbarWait(SmemAddr(&full_bar[i % S]), uint32_t(i / S) & 1);
      const uint32_t sw = base + uint32_t(i % S) * kStage, sx = sw + kXOffset;
      detail::WgmmaFence();
#pragma unroll
      for (int q = 0; q < KSUB; ++q) {
#pragma unroll
        for (int ks = 0; ks < kBoxK / 16; ++ks) {
          const uint64_t db = detail::SmemDesc(sx + q * kXBox + ks * 32, 16, 1024);
          const int accumulate = u != u_first || q > 0 || ks > 0;
#pragma unroll
          for (int h = 0; h < H; ++h) {
            Mma<NT>(acc[h],
                    detail::SmemDesc(sw + uint32_t(h * KSUB + q) * kBoxBytes + ks * 32, 16, 1024),
                    db, accumulate);
          }
        }
      }
      detail::WgmmaCommit();
      // The stage is free once this unit's MMAs are done (the MMAs are short next to a copy; one
      // unit later, after the next unit's issue, measured the same).
      detail::WgmmaWait<0>();
      detail::MbarArrive(SmemAddr(&empty_bar[i % S]));
    }
#pragma unroll
    for (int h = 0; h < H; ++h) {
#pragma unroll
      for (int r = 0; r < NT / 2; ++r) detail::FenceOperand(acc[h][r]);
    }

    // A CTA's partial: float4 (h, r) of thread tid at (h * NT / 8 + r) * 128 + tid (coalesced).
    constexpr int kQuads = H * NT / 8;
    if (u_first != tile_begin) {
      // A later part of tile t: its partial sums for the owner (one tile a CTA at most).
      float4* mine = a.partials + size_t(c) * (kPartialFloats / 4);
#pragma unroll
      for (int h = 0; h < H; ++h) {
#pragma unroll
        for (int r = 0; r < NT / 8; ++r) {
          __stcg(
              mine + (h * (NT / 8) + r) * 128 + tid,
              make_float4(acc[h][4 * r], acc[h][4 * r + 1], acc[h][4 * r + 2], acc[h][4 * r + 3]));
        }
      }
      detail::NamedBarrierSync(1, 128);
      if (tid == 0) StoreRelease(a.flags + c, 1);
      continue;
    }
    // The owner: the later parts of tile t (CTAs c + 1 .. c_last), their flags waited for
    // together, then added in CTA order, each part's loads issued together and the next
    // part's loads in flight while one is added.
    int c_last = c;
    while (c_last + 1 < a.ctas && UnitBegin(a, c_last + 1) < tile_end) ++c_last;
    if (c_last > c) {
      for (int c2 = c + 1 + tid; c2 <= c_last; c2 += 128) {
        while (LoadAcquire(a.flags + c2) == 0) __nanosleep(20);
        a.flags[c2] = 0;  // ready for the next call
      }
      detail::NamedBarrierSync(1, 128);
      auto load = [&](int c2, float4(&v)[kQuads]) {
        const float4* part = a.partials + size_t(c2) * (kPartialFloats / 4);
#pragma unroll
        for (int q = 0; q < kQuads; ++q) v[q] = __ldcg(part + q * 128 + tid);
      };
      float4 cur[kQuads], nxt[kQuads] = {};
      load(c + 1, cur);
      for (int c2 = c + 1; c2 <= c_last; ++c2) {
        if (c2 < c_last) load(c2 + 1, nxt);
#pragma unroll
        for (int h = 0; h < H; ++h) {
#pragma unroll
          for (int r = 0; r < NT / 8; ++r) {
            const float4 v = cur[h * (NT / 8) + r];
            acc[h][4 * r] += v.x, acc[h][4 * r + 1] += v.y;
            acc[h][4 * r + 2] += v.z, acc[h][4 * r + 3] += v.w;
          }
        }
#pragma unroll
        for (int q = 0; q < kQuads; ++q) cur[q] = nxt[q];
      }
    }
    const int g = lane / 4, qd = lane % 4;
#pragma unroll
    for (int j = 0; j < NT / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int row = 8 * j + 2 * qd + (e & 1);    // input row
        const int f = 16 * warp + g + 8 * (e >> 1);  // output row within the tile
        if (row >= a.rows) continue;
        if constexpr (OUT == kOutSwiGlu) {
          const float gate = acc[0][4 * j + e], up = acc[H - 1][4 * j + e];
          a.act[size_t(row) * a.up_row + 64 * t + f] =
              __float2bfloat16(gate / (1.0f + expf(-gate)) * up);
        } else {
#pragma unroll
          for (int h = 0; h < H; ++h) {
            const int col = HalfRow<OUT, H>(a, t, h) + f;
            if (col >= a.n) continue;
            if constexpr (OUT == kOutF32) {
              a.y[size_t(row) * a.n + col] = acc[h][4 * j + e];
            } else {
              a.y_bf16[size_t(row) * a.n + col] = __float2bfloat16(acc[h][4 * j + e]);
            }
          }
        }
      }
    }
  }
#else
  __trap();  // launched only on sm_90 devices (SkinnyGemm::Create checks)
#endif
}

template <int NT, int OUT, int KSUB, int H>
absl::Status Launch(SkinnyArgs& args, int k, cudaStream_t stream) {
  static std::atomic<uint64_t> attr_done{0};
  auto* kernel = &SkinnyGemmKernel<NT, OUT, KSUB, H>;
  constexpr size_t smem = SmemBytes<NT, KSUB, H>();
  if (cudaError_t err = OncePerDevice(attr_done,
                                      [&] {
                                        return cudaFuncSetAttribute(
                                            kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            int(smem));
                                      });
      err != cudaSuccess) {
    return CudaStatus(err, "SkinnyGemm: cudaFuncSetAttribute");
  }
  args.tiles = OUT == kOutSwiGlu ? args.n / 2 / 64 : (args.n + 64 * H - 1) / (64 * H);
  args.ksteps = (k + KSUB * kBoxK - 1) / (KSUB * kBoxK);
  args.units = int64_t(args.tiles) * args.ksteps;
  args.ctas = int(std::min<int64_t>(args.ctas, args.units));
  return CudaStatus(LaunchKernel(kernel, dim3(unsigned(args.ctas)), dim3(kThreads), smem, stream,
                                 LaunchOptions{}, args),
                    "launching SkinnyGemmKernel");
}

// The instantiations: k slices a unit 2 or 4; plain outputs in tiles of 64 or 128 rows.
template <int NT, int OUT>
absl::Status LaunchShape(SkinnyArgs& args, int k, int k_sub, int tile_rows, cudaStream_t stream) {
  if constexpr (OUT == kOutSwiGlu) {
    return k_sub == 2 ? Launch<NT, OUT, 2, 2>(args, k, stream)
                      : Launch<NT, OUT, 4, 2>(args, k, stream);
  } else {
    if (tile_rows == 128) {
      return k_sub == 2 ? Launch<NT, OUT, 2, 2>(args, k, stream)
                        : Launch<NT, OUT, 4, 2>(args, k, stream);
    }
    return k_sub == 2 ? Launch<NT, OUT, 2, 1>(args, k, stream)
                      : Launch<NT, OUT, 4, 1>(args, k, stream);
  }
}

absl::Status Encode(CUtensorMap* map, const __nv_bfloat16* base, int rows, int k, int box_rows) {
  const cuuint64_t dims[2] = {cuuint64_t(k), cuuint64_t(rows)};
  const cuuint64_t strides[1] = {cuuint64_t(k) * 2};  // bytes
  const cuuint32_t box[2] = {cuuint32_t(kBoxK), cuuint32_t(box_rows)};
  const cuuint32_t elem_strides[2] = {1, 1};
  const CUresult r = TensorMapEncoder()(
      map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<__nv_bfloat16*>(base), dims, strides,
      box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    return absl::InternalError(absl::StrCat("SkinnyGemm: cuTensorMapEncodeTiled error ", int(r),
                                            " for a [", rows, "][", k, "] operand"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<SkinnyGemm>> SkinnyGemm::Create() {
  if (ComputeCapabilityMajor() != 9) {
    return absl::FailedPreconditionError("SkinnyGemm: needs an sm_90 (Hopper) device");
  }
  if (TensorMapEncoder() == nullptr) {
    return absl::FailedPreconditionError(
        "SkinnyGemm: the driver has no cuTensorMapEncodeTiled (TMA)");
  }
  std::unique_ptr<SkinnyGemm> g(new SkinnyGemm());
  g->sms_ = MultiprocessorCount();
  const size_t partial_bytes = size_t(g->sms_) * kPartialFloats * sizeof(float);
  RESA_RETURN_IF_ERROR(CudaStatus(
      cudaMalloc(&g->partials_, partial_bytes),
      absl::StrCat("SkinnyGemm: cudaMalloc of ", partial_bytes, " bytes of partial sums").c_str()));
  RESA_RETURN_IF_ERROR(CudaStatus(cudaMalloc(&g->flags_, size_t(g->sms_) * sizeof(int)),
                                  "SkinnyGemm: cudaMalloc of the flags"));
  RESA_RETURN_IF_ERROR(CudaStatus(cudaMemset(g->flags_, 0, size_t(g->sms_) * sizeof(int)),
                                  "SkinnyGemm: cudaMemset of the flags"));
  RESA_RETURN_IF_ERROR(
      CudaStatus(cudaDeviceSynchronize(), "SkinnyGemm: cudaDeviceSynchronize after the memset"));
  return g;
}

SkinnyGemm::~SkinnyGemm() {
  cudaFree(partials_);
  cudaFree(flags_);
}

bool SkinnyGemm::Supported(int rows, int n, int k, bool swiglu) {
  return rows >= 1 && rows <= kMaxRows && n >= 1 && k >= 8 && k % 8 == 0 &&
         (!swiglu || (n % 2 == 0 && (n / 2) % 64 == 0));
}

absl::Status SkinnyGemm::Run(const SkinnyGemmParams& p, cudaStream_t stream) {
  const int outputs = int(p.y != nullptr) + int(p.y_bf16 != nullptr) + int(p.act != nullptr);
  if (outputs != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("SkinnyGemm: exactly one of y, y_bf16 and act must be set, got ", outputs));
  }
  const bool swiglu = p.act != nullptr;
  if (!Supported(p.rows, p.n, p.k, swiglu)) {
    return absl::InvalidArgumentError(
        absl::StrCat("SkinnyGemm: unsupported shape rows ", p.rows, ", n ", p.n, ", k ", p.k,
                     swiglu ? " (SwiGLU: n / 2 must be a multiple of 64)" : "",
                     "; rows must be in [1, ", kMaxRows, "], k a positive multiple of 8"));
  }
  if (p.x == nullptr || p.w == nullptr || reinterpret_cast<uintptr_t>(p.x) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(p.w) % 16 != 0) {
    return absl::InvalidArgumentError("SkinnyGemm: x and w must be non-null and 16-byte aligned");
  }
  const int nt = p.rows <= 32 ? 32 : 64;
  SkinnyArgs a{};
  RESA_RETURN_IF_ERROR(Encode(&a.map_w, p.w, p.n, p.k, 64));
  RESA_RETURN_IF_ERROR(Encode(&a.map_x, p.x, p.rows, p.k, nt));
  a.rows = p.rows;
  a.n = p.n;
  a.ctas = p.max_ctas > 0 ? std::min(p.max_ctas, sms_) : sms_;
  a.up_row = p.n / 2;
  a.y = p.y;
  a.y_bf16 = p.y_bf16;
  a.act = p.act;
  a.partials = reinterpret_cast<float4*>(partials_);
  a.flags = flags_;
  const int k_sub = p.k_sub == 2 || p.k_sub == 4 ? p.k_sub : kDefaultKSub;
  const int tile_rows = p.tile_rows == 64 || p.tile_rows == 128 ? p.tile_rows : kDefaultTileRows;
  if (nt == 32) {
    if (swiglu) return LaunchShape<32, kOutSwiGlu>(a, p.k, k_sub, tile_rows, stream);
    return p.y != nullptr ? LaunchShape<32, kOutF32>(a, p.k, k_sub, tile_rows, stream)
                          : LaunchShape<32, kOutBf16>(a, p.k, k_sub, tile_rows, stream);
  }
  if (swiglu) return LaunchShape<64, kOutSwiGlu>(a, p.k, k_sub, tile_rows, stream);
  return p.y != nullptr ? LaunchShape<64, kOutF32>(a, p.k, k_sub, tile_rows, stream)
                        : LaunchShape<64, kOutBf16>(a, p.k, k_sub, tile_rows, stream);
}

}  // namespace resa::cuda
