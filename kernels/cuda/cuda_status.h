// CUDA error codes -> absl::Status with the failing call and the device (STYLE.md habit 7).
#pragma once

#include <cuda_runtime.h>


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

// Multiprocessor count of the current device (cached per device; grid sizing only).
int MultiprocessorCount();

}  // namespace resa::cuda
