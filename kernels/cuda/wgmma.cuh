// Hopper warpgroup MMA (wgmma, sm_90a): shared-memory matrix descriptors and the shapes the chunk
// attention kernels and the skinny GEMM use, plus the mbarrier, TMA and setmaxnreg helpers of the
// wgmma kernels. All 128 threads of a warpgroup execute each wgmma call together.
//
// Accumulators (m64nN, fp32, N / 2 registers per thread): thread t of the warpgroup, warp w = t /
// 32, lane = 4 * g + c holds d[4 * j + e] = D[16 * w + g + 8 * (e / 2)][8 * j + 2 * c + e % 2], the
// mma.m16n8 layout of each n8 block. An A operand in registers (m64k16, 4 x bf16x2 per thread) is
// the m16n8k16 A layout per warp: a0 = A[g][2c..], a1 = A[g+8][2c..], a2 = A[g][8+2c..],
// a3 = A[g+8][8+2c..], so the accumulator of S = Q K^T packs straight into the A of O += P V.
//
// Shared-memory operands use the 128-byte swizzle: a matrix is stored as rows of 64 bf16 (128 B;
// the 16-byte chunk index XOR row % 8), 8-row atoms 1024 B apart, 1024-byte aligned; a 128-wide
// dimension is two such planes. Kernels pass the register operands through FenceOperand after a
// wait, so the compiler neither reads accumulators early nor reuses an A operand's registers while
// the MMA that reads them is in flight.
#pragma once

#include <cstdint>

namespace resa::cuda::detail {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define RESA_HAVE_WGMMA 1
#else
#define RESA_HAVE_WGMMA 0
#endif

// Accumulator operand lists of the inline assembly below: d[0..31] and d[0..63] as "+f".
#define RESA_WGMMA_F8(d, i)                                                                   \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
      "+f"(d[i + 6]), "+f"(d[i + 7])
#define RESA_WGMMA_F32(d) \
  RESA_WGMMA_F8(d, 0), RESA_WGMMA_F8(d, 8), RESA_WGMMA_F8(d, 16), RESA_WGMMA_F8(d, 24)
#define RESA_WGMMA_F64(d)                                                              \
  RESA_WGMMA_F32(d), RESA_WGMMA_F8(d, 32), RESA_WGMMA_F8(d, 40), RESA_WGMMA_F8(d, 48), \
      RESA_WGMMA_F8(d, 56)

// Descriptor of a 128-byte-swizzled operand at shared address `addr`: `lbo` = bytes between the
// two 64-element planes of an MN-major operand (ignored for K-major), `sbo` = bytes between 8-row
// atoms.
__device__ __forceinline__ uint64_t SmemDesc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t(lbo >> 4) << 16) | (uint64_t(sbo >> 4) << 32) |
         (uint64_t(1) << 62);
}

// Makes shared-memory writes of this thread (st.shared, cp.async) visible to wgmma's async proxy.
__device__ __forceinline__ void FenceProxyAsync() {
#if RESA_HAVE_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void WgmmaFence() {
#if RESA_HAVE_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void WgmmaCommit() {
#if RESA_HAVE_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void WgmmaWait() {
#if RESA_HAVE_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
__device__ __forceinline__ void FenceOperand(float& x) { asm volatile("" : "+f"(x)::"memory"); }
__device__ __forceinline__ void FenceOperand(uint32_t& x) { asm volatile("" : "+r"(x)::"memory"); }

// d (+)= A B, m64n32k16: A (64 x 16) and B (16 x 32) K-major in shared memory; accumulate = 0
// overwrites d.
__device__ __forceinline__ void WgmmaSS64x32(float (&d)[16], uint64_t a, uint64_t b,
                                             int accumulate) {
#if RESA_HAVE_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
      "%16, %17, p, 1, 1, 0, 0;\n}\n"
      : RESA_WGMMA_F8(d, 0), RESA_WGMMA_F8(d, 8)
      : "l"(a), "l"(b), "r"(accumulate));
#endif
}

// d (+)= A B, m64n64k16: A (64 x 16) and B (16 x 64) K-major in shared memory; accumulate = 0
// overwrites d.
__device__ __forceinline__ void WgmmaSS64x64(float (&d)[32], uint64_t a, uint64_t b,
                                             int accumulate) {
#if RESA_HAVE_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "%32, %33, p, 1, 1, 0, 0;\n}\n"
      : RESA_WGMMA_F32(d)
      : "l"(a), "l"(b), "r"(accumulate));
#endif
}

// d (+)= A B, m64n128k16: A (64 x 16) and B (16 x 128) K-major in shared memory; accumulate = 0
// overwrites d.
__device__ __forceinline__ void WgmmaSS64x128(float (&d)[64], uint64_t a, uint64_t b,
                                              int accumulate) {
#if RESA_HAVE_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1, 0, 0;\n}\n"
      : RESA_WGMMA_F64(d)
      : "l"(a), "l"(b), "r"(accumulate));
#endif
}

// d += A B, m64n64k16: A (64 x 16) in registers, B (16 x 64) MN-major in shared memory.
__device__ __forceinline__ void WgmmaRS64x64(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {
#if RESA_HAVE_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "{%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : RESA_WGMMA_F32(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
#endif
}

// d += A B, m64n128k16: A (64 x 16) in registers, B (16 x 128) MN-major in shared memory.
__device__ __forceinline__ void WgmmaRS64x128(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
#if RESA_HAVE_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : RESA_WGMMA_F64(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
#endif
}

// Shared-memory mbarriers (sm_90): init by one thread, then a CTA barrier before use.
__device__ __forceinline__ void MbarInit(uint32_t bar, uint32_t count) {
#if RESA_HAVE_WGMMA
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#endif
}
// Waits until the phase of parity `parity` of `bar` has completed.
__device__ __forceinline__ void MbarWait(uint32_t bar, uint32_t parity) {
#if RESA_HAVE_WGMMA
  asm volatile(
      "{\n.reg .pred done;\n"
      "wait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
#endif
}
__device__ __forceinline__ void MbarArrive(uint32_t bar) {
#if RESA_HAVE_WGMMA
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#endif
}
// Arrives on `bar` once every cp.async this thread issued so far has landed (the barrier's
// count includes this arrival).
__device__ __forceinline__ void CpAsyncArriveNoinc(uint32_t bar) {
#if RESA_HAVE_WGMMA
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
#endif
}
// Arrives on `bar` once every cp.async this thread issued so far has landed, counting one more
// expected arrival when issued (so the barrier's count need not include it): the phase cannot
// complete before those copies land as long as a counted arrival of this phase comes after it.
__device__ __forceinline__ void CpAsyncArriveInc(uint32_t bar) {
#if RESA_HAVE_WGMMA
  asm volatile("cp.async.mbarrier.arrive.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
#endif
}
// Arrives on `bar` and adds `bytes` to the transaction count its phase waits for (TMA copies
// that complete_tx on it).
__device__ __forceinline__ void MbarArriveExpectTx(uint32_t bar, uint32_t bytes) {
#if RESA_HAVE_WGMMA
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
#endif
}
// TMA (cp.async.bulk.tensor) of the box at coordinates (c0, c1, c2) of the 3-D tensor map at
// generic address `map` (a __grid_constant__ kernel parameter) into shared address `dst`,
// completing its bytes on `bar`. Elements outside the tensor land as zeros and still count.
__device__ __forceinline__ void TmaLoad3d(uint32_t dst, const void* map, int c0, int c1, int c2,
                                          uint32_t bar) {
#if RESA_HAVE_WGMMA
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], "
      "[%1, {%2, %3, %4}], [%5];\n" ::"r"(dst),
      "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
#endif
}
// The same for a 2-D tensor map: the box at (c0, c1).
__device__ __forceinline__ void TmaLoad2d(uint32_t dst, const void* map, int c0, int c1,
                                          uint32_t bar) {
#if RESA_HAVE_WGMMA
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], "
      "[%1, {%2, %3}], [%4];\n" ::"r"(dst),
      "l"(map), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
#endif
}
__device__ __forceinline__ void PrefetchTensorMap(const void* map) {
#if RESA_HAVE_WGMMA
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(map) : "memory");
#endif
}
// Named barrier `id` (1-15; 0 is __syncthreads) of `count` threads: wait for it, or arrive
// without waiting.
__device__ __forceinline__ void NamedBarrierSync(int id, int count) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void NamedBarrierArrive(int id, int count) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
// Moves this warpgroup's register budget to N per thread (all 128 threads execute it).
template <int N>
__device__ __forceinline__ void SetMaxRegsInc() {
#if RESA_HAVE_WGMMA
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void SetMaxRegsDec() {
#if RESA_HAVE_WGMMA
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

#undef RESA_WGMMA_F64
#undef RESA_WGMMA_F32
#undef RESA_WGMMA_F8

}  // namespace resa::cuda::detail
