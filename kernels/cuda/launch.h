// Kernel launches with programmatic dependent launch (PDL, sm_90).
//
// With PDL a kernel may be scheduled while the kernel launched just before it on the stream is
// still running, so its blocks are resident (and may run a prologue on constant data) by the
// time that kernel ends; a decode step of ~300 small kernels stops paying a launch gap per
// kernel. The contract every kernel launched through LaunchKernel keeps (device_util.cuh):
//   * it calls GridDependencyWait() before it reads anything the kernel launched just before it
//     writes and before it writes anything an earlier kernel reads or writes (in practice: first
//     thing, except for constant data such as weights, and for data written two or more launches
//     back, which has landed once this kernel is scheduled: the selection's summary loads and the
//     decode kernel's query staging, each documented at its wait);
//   * it calls LaunchDependents() after that wait, so the next kernel can be scheduled early in
//     turn (at most one kernel runs ahead: its blocks trigger only after their own wait), or
//     later (the selection's latency kernel after its scoring, when the caller asks:
//     SelectBlocksParams::early_dependents), or never, and the next kernel is scheduled as its
//     blocks exit (the selection kernels otherwise: the sparse decode after them measured ~8 us
//     per layer slower when scheduled during the scoring; the batch-1 QKV GEMV that appends
//     K/V: the dense decode after it, whose thread-block clusters then find the SMs held by the
//     GEMV's blocks, measured 0.1-0.8 ms a step slower; a trigger after the GEMV's main loop,
//     only the epilogue left, as much: 1.5B 256K 3.13 -> 3.97 ms).
// Kernels of other libraries (cuBLAS, NCCL) and copies are ordinary stream work: the kernel
// after them starts when they end, as without PDL.
#pragma once

#include <cuda_runtime.h>

#include <utility>

namespace resa::cuda {

// Whether LaunchKernel asks for PDL. On by default; RESA_CUDA_PDL=0 in the environment turns
// it off at start. Work captured in a CUDA graph keeps the setting it was captured with.
bool ProgrammaticLaunch();
void SetProgrammaticLaunch(bool on);

struct LaunchOptions {
  int cluster_x = 1;  // thread-block clusters of this many CTAs when > 1
  // Ask for PDL (when ProgrammaticLaunch()). Off for launches that measured slower with it:
  // the kernel then starts when the one before it ends, as an ordinary launch.
  bool overlap = true;
};

// kernel<<<grid, block, smem, stream>>>(args...) as `options` say. Returns the launch's error.
template <typename... Params, typename... Args>
cudaError_t LaunchKernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                         cudaStream_t stream, LaunchOptions options, Args&&... args) {
  cudaLaunchAttribute attr[2];
  unsigned n = 0;
  if (options.cluster_x > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = unsigned(options.cluster_x);
    attr[n].val.clusterDim.y = 1;
    attr[n].val.clusterDim.z = 1;
    ++n;
  }
  if (options.overlap && ProgrammaticLaunch()) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = n;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

}  // namespace resa::cuda
