// CUDA error codes -> absl::Status with the failing call and the device (STYLE.md habit 7).
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace resa::cuda {

inline absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  int device = -1;
  cudaGetDevice(&device);
  return absl::InternalError(absl::StrCat(what, " on CUDA device ", device, ": ",
                                          cudaGetErrorName(err), " (", cudaGetErrorString(err),
                                          ")"));
}

// After a <<<...>>> launch: reports a bad configuration or a sticky error from earlier work.
inline absl::Status CheckLaunch(const char* kernel) {
  return CudaStatus(cudaGetLastError(), absl::StrCat("launching ", kernel).c_str());
}

// Runs set() (e.g. a cudaFuncSetAttribute) once per device for the call site owning `done`, so
// launchers pay for it on their first launch only; returns set()'s error, or success after.
template <typename Set>
cudaError_t OncePerDevice(std::atomic<uint64_t>& done, Set set) {
  int device = 0;
  if (cudaError_t err = cudaGetDevice(&device); err != cudaSuccess) return err;
  const uint64_t bit = uint64_t(1) << (device & 63);
  if (done.load(std::memory_order_acquire) & bit) return cudaSuccess;
  const cudaError_t err = set();
  if (err == cudaSuccess) done.fetch_or(bit, std::memory_order_release);
  return err;
}

// Multiprocessor count of the current device (cached per device; grid sizing only).
int MultiprocessorCount();

// Compute capability major of the current device (cached per device; 9 without a device, as
// for the H200 the grids are sized for).
int ComputeCapabilityMajor();

}  // namespace resa::cuda
