// Shared by the two parts of `resa-bench kernels`: kernels_bench.cc (the attention kernels, the
// issue-4 targets and the command) and kernels_bench_gemv.cc (`--gemv`, the decode GEMV). The
// options, owning device memory, a random bf16 fill and the CUDA-graph timer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#if RESA_KERNELS_BENCH_CUDA
#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#endif

namespace resa::kernels_bench {

struct KernelsBenchOptions {
  std::vector<std::string> models = {"1.5B", "7B"};
  std::vector<int> contexts = {32768, 131072, 262144};
  std::vector<int> batches = {1, 8};
  int iters = 20;
  double rotate_bytes = 1.5e9;  // minimum working set per problem (L2 is 60 MB)
  bool sdpa = true;
  std::string python = "python3";
#ifdef RESA_KERNELS_BENCH_SCRIPT
  std::string sdpa_script = RESA_KERNELS_BENCH_SCRIPT;
#else
  std::string sdpa_script = "kernels/cuda/bench/sdpa_baseline.py";
#endif
  int prefill_tokens = 16384;
  // --gemv: the decode GEMV section instead of the attention kernels.
  bool gemv = false;
  bool gemv_sweep = false;  // also every (k split, loads per lane) of the new kernel
  std::vector<int> gemv_rows = {1, 2, 4, 8};
  std::vector<int> skinny_rows = {32};     // --gemv: SkinnyGemm against cuBLAS at these rows
  std::vector<std::string> gemv_matrices;  // empty: every matrix (qkv, o, gate_up, down, lm_head)
  int gemv_iters = 200;
  double gemv_rotate_bytes = 256e6;  // weight copies per shape (L2 is 60 MB)
  // Programmatic dependent launch between the timed launches (kernels/cuda/launch.h). Off by
  // default: each kernel is timed on its own, as in earlier runs; the GEMV's "new_pdl" column
  // turns it on for that kernel alone.
  bool pdl = false;
  // The device's L2 fetch granularity in bytes while timing (as the CUDA model sets it).
  int l2_fetch = 128;
  // --sync: the sync probe (kernels/cuda/sync_probe.h) instead of the attention kernels: one
  // phase of a grid-wide dependency chain as a kernel boundary (graph, with and without PDL)
  // and as a grid barrier, at these blocks a multiprocessor of sync_threads threads.
  bool sync = false;
  std::vector<int> sync_blocks_per_sm = {1, 2, 4, 8};
  int sync_threads = 256;
  int sync_phases = 2000;
};

#if RESA_KERNELS_BENCH_CUDA

absl::Status Cuda(cudaError_t err, const char* what);

// Owning device allocation.
struct DevMem {
  void* p = nullptr;
  size_t bytes = 0;
  DevMem() = default;
  DevMem(const DevMem&) = delete;
  DevMem& operator=(const DevMem&) = delete;
  ~DevMem() {
    if (p != nullptr) cudaFree(p);
  }
  absl::Status Alloc(size_t n) {
    bytes = n;
    return Cuda(cudaMalloc(&p, n > 0 ? n : 1), "cudaMalloc");
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

// Fills device memory with random finite bf16 (normal, sigma 1): replicates one random block.
absl::Status FillRandomBf16(void* dst, size_t bytes, uint32_t seed);

// Median microseconds per call of fn(i, stream): `iters` calls are captured into one CUDA graph
// and its replays are timed with events (5 repeats), so host launch overhead, which a decode
// step captured in a graph does not pay, stays out of the figure. Warm-up calls run first.
using BenchFn = std::function<absl::Status(int, cudaStream_t)>;
absl::StatusOr<double> TimeUs(const BenchFn& fn, int iters);

#endif  // RESA_KERNELS_BENCH_CUDA

#if RESA_KERNELS_BENCH_GEMV
// `--gemv` (kernels_bench_gemv.cc), after the copy ceiling (TB/s) was measured: the exit code.
int RunGemvBench(const KernelsBenchOptions& o, double ceiling);
#endif

}  // namespace resa::kernels_bench
