#include "kernels/cuda/cuda_status.h"

#include <array>
#include <atomic>

namespace resa::cuda {

int MultiprocessorCount() {
  constexpr int kMaxDevices = 64;
  static std::array<std::atomic<int>, kMaxDevices> cache{};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) return 132;
  int n = cache[device].load(std::memory_order_relaxed);
  if (n > 0) return n;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || n <= 0) {
    cudaGetLastError();  // clear: no device here; size grids for an H200
    n = 132;
  }
  cache[device].store(n, std::memory_order_relaxed);
  return n;
}

}  // namespace resa::cuda
