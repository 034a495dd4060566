// A GEMM for linear layers of 1-64 rows (a batch-1 rectification pass has 32) on Hopper: the
// weights stream once through a shared-memory ring by TMA, 256 contiguous bytes of each weight
// row a unit of work, and meet the rows on the tensor cores (wgmma: 64 weight rows as the MMA's
// M, the input rows as its N = 32 or 64). Every multiprocessor takes the same amount of work
// (stream-K: each CTA an equal run of (tile, k step) units); a tile split between CTAs is summed
// in a fixed order by the CTA holding its first k step, so results repeat bit for bit. It can
// write gate_up's SwiGLU product straight from its fp32 accumulators.
// On the H200 it runs level with cuBLAS on the 7B shapes and about 2 us a launch slower on the
// 1.5B ones (docs/cuda_backend.md, run 50), so CudaModel uses it only when asked
// (CudaModelOptions::skinny_gemm). sm_90 only: SkinnyGemm::Create fails elsewhere.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace resa::cuda {

struct SkinnyGemmParams {
  const __nv_bfloat16* x = nullptr;  // [rows][k]
  const __nv_bfloat16* w = nullptr;  // [n][k]
  int rows = 0, n = 0, k = 0;
  // Exactly one output: y = x w^T as fp32 or bf16 ([rows][n]), or act = silu(gate) * up as bf16
  // ([rows][n / 2], gate = weight rows [0, n / 2), up = rows [n / 2, n); fp32 sums, one rounding).
  float* y = nullptr;
  __nv_bfloat16* y_bf16 = nullptr;
  __nv_bfloat16* act = nullptr;
  // At most this many CTAs (0: one per multiprocessor). Tests use it to split tiles between CTAs
  // in every way.
  int max_ctas = 0;
  // 64-wide k slices a unit of work streams per weight row: 2 or 4 (0: the default, 4), and
  // weight rows a tile of a plain output: 64 or 128 (0: the default, 64). For the benchmark's A/B.
  int k_sub = 0;
  int tile_rows = 0;
};

// One per stream of calls: the workspace of the tiles split between CTAs (their partial sums and
// ready flags) is reused by every call, so calls on different streams must not overlap in time.
class SkinnyGemm {
 public:
  static constexpr int kMaxRows = 64;
  // Fails (FailedPrecondition) on a device that is not sm_90 or a driver without TMA.
  static absl::StatusOr<std::unique_ptr<SkinnyGemm>> Create();
  ~SkinnyGemm();
  SkinnyGemm(const SkinnyGemm&) = delete;
  SkinnyGemm& operator=(const SkinnyGemm&) = delete;
  // Whether a call of this shape runs here: 1 <= rows <= kMaxRows, n >= 1, k % 8 == 0 (the
  // rows' 16-byte alignment TMA needs), and with the SwiGLU output n / 2 a multiple of 64.
  static bool Supported(int rows, int n, int k, bool swiglu);

  // InvalidArgument for shapes Supported rejects, null or misaligned (16-byte) operands, or not
  // exactly one output.
  absl::Status Run(const SkinnyGemmParams& p, cudaStream_t stream);

 private:
  SkinnyGemm() = default;
  int sms_ = 0;
  float* partials_ = nullptr;  // [sms][kMaxRows x 128] fp32: a CTA's partial tile
  int* flags_ = nullptr;       // [sms]: partial ready; zero between calls
};

}  // namespace resa::cuda
