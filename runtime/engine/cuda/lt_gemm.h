// The CUDA backend's GEMM for linear layers of more rows than the decode GEMVs take (prefill
// and rectification chunks, batches of > 8 rows): cuBLASLt, bf16 operands, fp32 accumulation,
// fp32 or bf16 output.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <map>
#include <memory>
#include <tuple>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/engine/cuda/device_memory.h"

namespace resa::cuda {

// One cuBLASLt handle and a fixed workspace (so calls can be captured in CUDA graphs), with the
// matmul descriptor, layouts and heuristic algorithm of each problem cached: the host cost of a
// call after the first of its shape is one cublasLtMatmul. The algorithm is the heuristic's
// first choice for the shape and the operands' alignment, so a shape always runs the same
// kernel (results repeat bit for bit from call to call and run to run). Split-k partial sums
// live in the one workspace: calls on different streams must not overlap in time.
class LtGemm {
 public:
  // `workspace_bytes` of device memory are allocated here and kept.
  static absl::StatusOr<std::unique_ptr<LtGemm>> Create(size_t workspace_bytes);
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  // Row-major y [rows][n] (fp32) = x [rows][k] (bf16) * w [n][k]^T (bf16) on `stream`.
  // InvalidArgument for non-positive shapes or null pointers.
  absl::Status Linear(const __nv_bfloat16* x, const __nv_bfloat16* w, int rows, int n, int k,
                      float* y, cudaStream_t stream);
  // The same product rounded to bf16 (nearest even) by the GEMM's epilogue: half the bytes
  // written and read back.
  absl::Status Linear(const __nv_bfloat16* x, const __nv_bfloat16* w, int rows, int n, int k,
                      __nv_bfloat16* y, cudaStream_t stream);

  // Problems with a cached plan (tests; the cache holds at most kMaxPlans).
  size_t cached_plans() const { return plans_.size(); }
  static constexpr size_t kMaxPlans = 256;

 private:
  LtGemm() = default;
  struct Plan;
  // (rows, n, k, alignment of x, of w, of y in bytes (capped at 256), y's cudaDataType)
  using Key = std::tuple<int, int, int, int, int, int, int>;
  absl::StatusOr<const Plan*> GetPlan(const Key& key);
  absl::Status Run(const __nv_bfloat16* x, const __nv_bfloat16* w, int rows, int n, int k, void* y,
                   cudaDataType_t y_type, cudaStream_t stream);

  cublasLtHandle_t handle_ = nullptr;
  DeviceAllocation workspace_;
  std::map<Key, std::unique_ptr<Plan>> plans_;
};

}  // namespace resa::cuda
