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

// The L2 fetch granularity (cudaLimitMaxL2FetchGranularity: bytes, 0-128, a hint) the CUDA model
// puts on its device before every step. 128 by default: the decode kernel's K loads and the
// selection's summary loads each ask for 64-byte halves of 128-byte lines, which the device's
// own default (64 on the H200) fetches from HBM one half at a time (docs/kernels.md, run 23).
// RESA_CUDA_L2_FETCH=<bytes> in the environment sets it at start (values outside 0-128 are
// ignored); the setter clamps to 0-128.
int L2FetchGranularity();
void SetL2FetchGranularity(int bytes);
// Sets the current device's limit to L2FetchGranularity() unless this process already did (the
// limit holds for the whole context: every stream and library on the device). A device that
// does not support the limit is left as it is (success).
absl::Status ApplyL2FetchGranularity();

}  // namespace resa::cuda
