#include "runtime/engine/cuda/lt_gemm.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "runtime/core/status.h"

namespace resa::cuda {
namespace {

absl::Status LtStatus(cublasStatus_t st, const char* what) {
  if (st == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat(what, ": cuBLAS status ", int(st), " (", cublasLtGetStatusName(st), ")"));
}

// The largest power of two (<= 256) dividing the address: what cuBLASLt's heuristic is told,
// so it never picks a kernel that needs more.
int Alignment(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  int align = 256;
  while (align > 1 && a % uintptr_t(align) != 0) align /= 2;
  return align;
}

}  // namespace

struct LtGemm::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~Plan() {
    if (c != nullptr) cublasLtMatrixLayoutDestroy(c);
    if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
    if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
    if (desc != nullptr) cublasLtMatmulDescDestroy(desc);
  }
};

absl::StatusOr<std::unique_ptr<LtGemm>> LtGemm::Create(size_t workspace_bytes) {
  std::unique_ptr<LtGemm> g(new LtGemm());
  RESA_RETURN_IF_ERROR(LtStatus(cublasLtCreate(&g->handle_), "cublasLtCreate"));
  RESA_ASSIGN_OR_RETURN(g->workspace_,
                        DeviceAllocation::Create(workspace_bytes, "the cuBLASLt workspace"));
  return g;
}

LtGemm::~LtGemm() {
  plans_.clear();
  if (handle_ != nullptr) cublasLtDestroy(handle_);
}

absl::StatusOr<const LtGemm::Plan*> LtGemm::GetPlan(const Key& key) {
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second.get();
  const auto [rows, n, k, align_x, align_w, align_y, y_type] = key;
  // Row-major y [rows][n] = x [rows][k] w [n][k]^T is, column-major, y^T (n x rows, ld n) =
  // op(A) B with A = w as stored (k x n, ld k, transposed) and B = x^T (k x rows, ld k).
  auto plan = std::make_unique<Plan>();
  RESA_RETURN_IF_ERROR(
      LtStatus(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F),
               "cublasLtMatmulDescCreate"));
  const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
  RESA_RETURN_IF_ERROR(
      LtStatus(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a,
                                              sizeof(trans_a)),
               "cublasLtMatmulDescSetAttribute"));
  RESA_RETURN_IF_ERROR(
      LtStatus(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b,
                                              sizeof(trans_b)),
               "cublasLtMatmulDescSetAttribute"));
  RESA_RETURN_IF_ERROR(LtStatus(
      cublasLtMatrixLayoutCreate(&plan->a, CUDA_R_16BF, uint64_t(k), uint64_t(n), int64_t(k)),
      "cublasLtMatrixLayoutCreate"));
  RESA_RETURN_IF_ERROR(LtStatus(
      cublasLtMatrixLayoutCreate(&plan->b, CUDA_R_16BF, uint64_t(k), uint64_t(rows), int64_t(k)),
      "cublasLtMatrixLayoutCreate"));
  RESA_RETURN_IF_ERROR(LtStatus(cublasLtMatrixLayoutCreate(&plan->c, cudaDataType_t(y_type),
                                                           uint64_t(n), uint64_t(rows), int64_t(n)),
                                "cublasLtMatrixLayoutCreate"));
  cublasLtMatmulPreference_t pref = nullptr;
  RESA_RETURN_IF_ERROR(
      LtStatus(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate"));
  const uint64_t ws = workspace_.bytes();
  const uint32_t aw = uint32_t(align_w), ax = uint32_t(align_x), ay = uint32_t(align_y);
  cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aw,
                                              sizeof(aw));
  }
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ax,
                                              sizeof(ax));
  }
  // Split-k partial sums meet in fp32 (the workspace), never in y's type: a bf16 y would add
  // them rounded, several bf16 ulps off; nor "in place" in y.
  const uint32_t reductions =
      CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                              &reductions, sizeof(reductions));
  }
  for (const auto attr :
       {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
    if (st == CUBLAS_STATUS_SUCCESS) {
      st = cublasLtMatmulPreferenceSetAttribute(pref, attr, &ay, sizeof(ay));
    }
  }
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasLtMatmulAlgoGetHeuristic(handle_, plan->desc, plan->a, plan->b, plan->c, plan->c,
                                        pref, 1, &result, &found);
  }
  cublasLtMatmulPreferenceDestroy(pref);
  RESA_RETURN_IF_ERROR(LtStatus(st, "cublasLtMatmulAlgoGetHeuristic"));
  if (found == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cuBLASLt has no algorithm for a bf16 linear layer of ", rows, " x ", k,
                     " -> ", n, y_type == CUDA_R_32F ? " (fp32 out" : " (bf16 out",
                     ", operand alignment ", align_x, " / ", align_w, " / ", align_y, " bytes)"));
  }
  plan->algo = result.algo;
  if (plans_.size() >= kMaxPlans) plans_.clear();  // e.g. many distinct prefill tail lengths
  return plans_.emplace(key, std::move(plan)).first->second.get();
}

absl::Status LtGemm::Linear(const __nv_bfloat16* x, const __nv_bfloat16* w, int rows, int n, int k,
                            float* y, cudaStream_t stream) {
  return Run(x, w, rows, n, k, y, CUDA_R_32F, stream);
}

absl::Status LtGemm::Linear(const __nv_bfloat16* x, const __nv_bfloat16* w, int rows, int n, int k,
                            __nv_bfloat16* y, cudaStream_t stream) {
  return Run(x, w, rows, n, k, y, CUDA_R_16BF, stream);
}

absl::Status LtGemm::Run(const __nv_bfloat16* x, const __nv_bfloat16* w, int rows, int n, int k,
                         void* y, cudaDataType_t y_type, cudaStream_t stream) {
  if (rows <= 0 || n <= 0 || k <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LtGemm::Linear: shapes must be positive, got rows ", rows, " n ", n, " k ", k));
  }
  if (x == nullptr || w == nullptr || y == nullptr) {
    return absl::InvalidArgumentError("LtGemm::Linear: null operand");
  }
  RESA_ASSIGN_OR_RETURN(const Plan* plan, GetPlan(Key{rows, n, k, Alignment(x), Alignment(w),
                                                      Alignment(y), int(y_type)}));
  // alpha and beta in the compute type (fp32) whatever y's type.
  const float one = 1.0f, zero = 0.0f;
  return LtStatus(
      cublasLtMatmul(handle_, plan->desc, &one, w, plan->a, x, plan->b, &zero, y, plan->c, y,
                     plan->c, &plan->algo, workspace_.as<void>(), workspace_.bytes(), stream),
      "cublasLtMatmul (bf16 linear layer)");
}

}  // namespace resa::cuda
