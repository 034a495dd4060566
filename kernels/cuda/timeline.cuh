// Device side of the kernel timeline (timeline.h): Stamp(phase), and the readings of the
// including translation unit (one copy per .cu file; each exposes its own reset and read).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/timeline.h"

namespace resa::cuda::timeline {

#ifdef RESA_KERNEL_TIMELINE
namespace {
__device__ unsigned long long g_stamps[kTlPhases][2];  // earliest, latest CTA

absl::Status ResetStamps() {
  unsigned long long init[kTlPhases][2];
  for (auto& s : init) s[0] = ~0ull, s[1] = 0ull;
  return CudaStatus(cudaMemcpyToSymbol(g_stamps, init, sizeof(init)), "resetting the timeline");
}
absl::Status ReadStamps(uint64_t (*out)[2]) {
  unsigned long long got[kTlPhases][2];
  if (auto st =
          CudaStatus(cudaMemcpyFromSymbol(got, g_stamps, sizeof(got)), "reading the timeline");
      !st.ok()) {
    return st;
  }
  for (int i = 0; i < kTlPhases; ++i) {
    if (got[i][0] < out[i][0]) out[i][0] = got[i][0];
    if (got[i][1] > out[i][1]) out[i][1] = got[i][1];
  }
  return absl::OkStatus();
}
}  // namespace
#endif

// Thread 0 of the CTA records the global timer for `phase`; nothing without the option.
__device__ __forceinline__ void Stamp(TimelinePhase phase) {
#ifdef RESA_KERNEL_TIMELINE
  if (threadIdx.x == 0) {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    atomicMin(&g_stamps[phase][0], t);
    atomicMax(&g_stamps[phase][1], t);
  }
#else
  (void)phase;
#endif
}

}  // namespace resa::cuda::timeline
