#include "kernels/cuda/cuda_status.h"

#include <algorithm>
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

namespace {
constexpr int kDefaultL2FetchBytes = 128;
std::atomic<int>& L2FetchBytes() {
  static std::atomic<int> bytes{[] {
    const char* v = std::getenv("RESA_CUDA_L2_FETCH");
    if (v == nullptr || *v == '\0') return kDefaultL2FetchBytes;
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    return *end == '\0' && n >= 0 && n <= 128 ? int(n) : kDefaultL2FetchBytes;
  }()};
  return bytes;
}
}  // namespace

int L2FetchGranularity() { return L2FetchBytes().load(std::memory_order_relaxed); }
void SetL2FetchGranularity(int bytes) {
  L2FetchBytes().store(std::clamp(bytes, 0, 128), std::memory_order_relaxed);
}

absl::Status ApplyL2FetchGranularity() {
  // 1 + the value this process last set on each device (0: not yet).
  static std::array<std::atomic<int>, kMaxDevices> applied{};
  int device = 0;
  if (absl::Status st = CudaStatus(cudaGetDevice(&device), "cudaGetDevice"); !st.ok()) return st;
  const int want = L2FetchGranularity();
  std::atomic<int>* slot = device >= 0 && device < kMaxDevices ? &applied[device] : nullptr;
  if (slot != nullptr && slot->load(std::memory_order_relaxed) == want + 1) return absl::OkStatus();
  const cudaError_t err = cudaDeviceSetLimit(cudaLimitMaxL2FetchGranularity, size_t(want));
  if (err == cudaErrorUnsupportedLimit) {
    cudaGetLastError();
  } else if (err != cudaSuccess) {
    return CudaStatus(err, "setting the L2 fetch granularity");
  }
  if (slot != nullptr) slot->store(want + 1, std::memory_order_relaxed);
  return absl::OkStatus();
}

}  // namespace resa::cuda
