#include "kernels/cuda/cuda_status.h"

#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/launch.h"

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

namespace {
std::atomic<bool>& PdlFlag() {
  static std::atomic<bool> flag{[] {
    const char* v = std::getenv("RESA_CUDA_PDL");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }()};
  return flag;
}
}  // namespace

bool ProgrammaticLaunch() { return PdlFlag().load(std::memory_order_relaxed); }
void SetProgrammaticLaunch(bool on) { PdlFlag().store(on, std::memory_order_relaxed); }

}  // namespace resa::cuda
