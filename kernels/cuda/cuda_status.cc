#include "kernels/cuda/cuda_status.h"

#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/launch.h"

namespace resa::cuda {

namespace {

// Attribute `attr` of the current device, cached per device; `fallback` without a device.
int CachedDeviceAttribute(std::atomic<int>* cache, int max_devices, cudaDeviceAttr attr,
                          int fallback) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= max_devices) {
    cudaGetLastError();
    return fallback;
  }
  int n = cache[device].load(std::memory_order_relaxed);
  if (n > 0) return n;
  if (cudaDeviceGetAttribute(&n, attr, device) != cudaSuccess || n <= 0) {
    cudaGetLastError();  // clear: no device here
    n = fallback;
  }
  cache[device].store(n, std::memory_order_relaxed);
  return n;
}

constexpr int kMaxDevices = 64;

}  // namespace

int MultiprocessorCount() {
  static std::array<std::atomic<int>, kMaxDevices> cache{};
  return CachedDeviceAttribute(cache.data(), kMaxDevices, cudaDevAttrMultiProcessorCount, 132);
}

int ComputeCapabilityMajor() {
  static std::array<std::atomic<int>, kMaxDevices> cache{};
  return CachedDeviceAttribute(cache.data(), kMaxDevices, cudaDevAttrComputeCapabilityMajor, 9);
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
