// Picks the machine a model runs on: the one place that knows whether the CUDA backend was
// built (STYLE.md habit 10). Everything else talks to ModelBackend.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"
#include "runtime/engine/cpu_weights.h"
#include "runtime/engine/model_backend.h"

namespace resa {

enum class Device { kCpu, kCuda };

// "cpu" or "cuda"; the message names --device.
absl::StatusOr<Device> ParseDevice(std::string_view name);
// Whether this build has the CUDA backend (a device may still be missing at run time).
bool CudaBackendBuilt();
// Whether MakeBackend can run on `device` (CUDA: this build has the backend and device
// `cuda_device` is usable; it becomes the current device). Cheap: programs call it before
// loading a model, so a missing GPU fails in a second, not after the load.
absl::Status CheckDevice(Device device, int cuda_device = 0);

struct BackendOptions {
  Device device = Device::kCpu;
  // KV capacity in tokens (rounded up to whole pages); 0 on CUDA: all free device memory after
  // the weights (minus a reserve for activations). Must be > 0 on the CPU.
  int64_t kv_tokens = 0;
  // CUDA: decode batches of up to this many rows (<= 8) use the backend's GEMV (tensor cores
  // for batches), larger ones cuBLAS (CudaModelOptions::gemv_max_rows).
  int gemv_max_rows = 8;
  // CUDA: the GPU (CUDA device index) the backend runs on; ranks pass their local rank.
  int cuda_device = 0;
  // CUDA, one rank of a TP x SP grid (runtime/engine/cuda/cuda_model.h, CudaModelGroups): the
  // weights hold the TP rank's shard; tp/sp are device (NCCL) or host-buffer communicators,
  // sp_host the SP group over host buffers (null: sp is one). Null groups: one rank. The CPU
  // backend of a grid is built by the caller (CpuModel::Create).
  Communicator* tp_comm = nullptr;
  Communicator* sp_comm = nullptr;
  Communicator* sp_host_comm = nullptr;
};

// CUDA devices visible to this process (0 without the CUDA backend or a driver).
int CudaDeviceCount();

// CUDA: process-wide switches of how a step runs, for A/B runs (resa-bench e2e) and diagnosis;
// the defaults are the faster choices measured on the H200. The CUDA model keys its graphs by
// them, so steps captured earlier keep the settings they were captured with. No effect
// without the CUDA backend.
struct CudaTuning {
  // Programmatic dependent launch of the step's kernels (kernels/cuda/launch.h; each kernel
  // scheduled while the one before it ends). RESA_CUDA_PDL=0 turns it off at start.
  bool programmatic_launch = true;
  // The decode GEMVs (steps of up to 8 rows) run their epilogues: SwiGLU in gate_up, bias and
  // RoPE in qkv (cuda_model.h).
  bool swiglu_epilogue = true;
  // The RMSNorms of those steps run inside their GEMVs (cuda_model.h, FusedNorms).
  // RESA_CUDA_FUSED_NORMS=0 turns it off at start.
  bool fused_norms = true;
  // Prefill and rectification chunks run on the wgmma attention kernel (sm_90; else the
  // mma.sync one). RESA_CUDA_CHUNK_KERNEL=mma turns it off at start.
  bool wgmma_chunk = true;
  // The fused selections keep a threshold hint per row between decode steps (cuda_model.h).
  bool selection_hints = true;
  // The L2 fetch granularity in bytes (0-128) the model sets on its device before each step
  // (kernels/cuda/cuda_status.h). RESA_CUDA_L2_FETCH=<bytes> sets it at start.
  int l2_fetch_bytes = 128;
};
CudaTuning GetCudaTuning();
void SetCudaTuning(const CudaTuning& tuning);

// Rows the CUDA fused selections (with hints) ranked from their hint's candidates and with the
// whole tail since the process started, on the current device, and of the first those placed by
// the scoring's histogram (cuda::SelectionHintCounts); zeros without CUDA or a device.
struct SelectionHintTally {
  int64_t from_candidates = 0;
  int64_t whole_tail = 0;
  int64_t from_histogram = 0;
};
SelectionHintTally ReadSelectionHintTally();

struct Backend {
  std::unique_ptr<ModelBackend> model;
  std::string description;  // device, weight and KV bytes, KV capacity and how it was sized
};

// The CPU backend reads `weights` in place (they must outlive it); the CUDA one copies them to
// the device as bf16. Errors: no CUDA in this build or no device, too little memory.
absl::StatusOr<Backend> MakeBackend(const CpuWeights& weights, const BackendOptions& options);

// A random-weight model of `config`'s exact shapes, for speed at full size without weight
// files: on CUDA drawn on the device (no host copy); the CPU backend is not offered here (load
// "synthetic:<shape>" through LoadModel instead): Unimplemented.
absl::StatusOr<Backend> MakeRandomBackend(const ModelConfig& config, uint64_t seed,
                                          const BackendOptions& options);

// The device's copy bandwidth measured now (GB/s, bytes read + written), the ceiling the
// benchmarks compare against. Unimplemented for the CPU (bench_util.h measures that one).
absl::StatusOr<double> MeasureDeviceCopyGbps(Device device);

// The device's bf16 GEMM rate measured now (TFLOP/s, an 8192^3 product through the CUDA
// backend's cuBLASLt GEMM), the compute ceiling of prefill benchmarks. Unimplemented for the CPU.
absl::StatusOr<double> MeasureDeviceGemmTflops(Device device);

}  // namespace resa
