// Element-wise and per-row model ops of the CUDA backend's forward, and the decode GEMV.
// CPU twins (same maths, fp32/fp64, bf16 rounding where the GPU stores bf16): model_ops_ref.h.
//
// Activations: the residual stream h is fp32 [rows][hidden]; inputs of matrix products (x, q,
// k, v, act) are bf16; matrix products accumulate and write fp32. All pointers are device
// pointers; launchers validate shapes, enqueue on `stream` without synchronising, and check the
// launch (no error is left pending).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/paged_kv_cuda.h"

namespace resa::cuda {

// h[r][:] = float(table[tokens[r]][:]); table [vocab][hidden] bf16. Token ids must be in range
// (the caller checks them on the host).
absl::Status EmbedCuda(const __nv_bfloat16* table, const int32_t* tokens, int rows, int hidden,
                       float* h, cudaStream_t stream);

// When `add` is set: h[r] += add[r] (stored back to h). Then x[r] = bf16(h[r] * inv_rms * w),
// inv_rms = 1 / sqrt(mean(h[r]^2) + eps) accumulated in fp32. w fp32 [dim]. x may be null
// (residual add only).
absl::Status AddRmsNormCuda(float* h, const float* add, const float* weight, int rows, int dim,
                            float eps, __nv_bfloat16* x, cudaStream_t stream);

// EmbedCuda and then AddRmsNormCuda(add = null) in one launch, with the same bits: h[r] = the
// embedding row of tokens[r], x[r] = bf16(h[r] * inv_rms * w). The first layer's input norm.
absl::Status EmbedRmsNormCuda(const __nv_bfloat16* table, const int32_t* tokens, int rows, int dim,
                              const float* weight, float eps, float* h, __nv_bfloat16* x,
                              cudaStream_t stream);

// The QKV epilogue: qkv fp32 [rows][(H + 2 Hkv) d] (q heads, then k heads, then v heads), plus
// bias fp32 [(H + 2 Hkv) d] when set; q and k rotated by NeoX RoPE at positions[r] (angle
// pos * theta^(-2i/d) computed in fp64, as the CPU RopeNeox); written as bf16 q [rows][H][d],
// k and v [rows][Hkv][d].
struct QkvRopeParams {
  const float* qkv = nullptr;
  const float* bias = nullptr;
  const int32_t* positions = nullptr;
  int rows = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0;
  float theta = 10000.0f;
  __nv_bfloat16* q = nullptr;
  __nv_bfloat16* k = nullptr;
  __nv_bfloat16* v = nullptr;

  // Optional, GemvQkvRopeBf16Cuda only (QkvRopeCuda refuses it): with kv.k set, each row's k
  // and v also go to their slot of the paged cache and the page's summary (device layout,
  // paged_kv_cuda.h) is recomputed, as WriteKvCuda does for runs of one token at positions[r]
  // (bit for bit): row r (a sequence of its own: rows share no page) writes page
  // page_table[r * page_table_stride + positions[r] / 16], slot positions[r] % 16, with
  // num_keys[r] (> positions[r]) keys valid. Device pointers; page_table_stride may be 0 for one
  // row.
  PagedKvCuda kv;
  const int32_t* page_table = nullptr;
  const int32_t* num_keys = nullptr;
  int page_table_stride = 0;
};
absl::Status QkvRopeCuda(const QkvRopeParams& p, cudaStream_t stream);

// act[r][i] = bf16(silu(gu[r][i]) * gu[r][inter + i]); gu fp32 or bf16 [rows][2 inter] (fp32
// maths either way).
absl::Status SiluMulCuda(const float* gu, int rows, int inter, __nv_bfloat16* act,
                         cudaStream_t stream);
absl::Status SiluMulCuda(const __nv_bfloat16* gu, int rows, int inter, __nv_bfloat16* act,
                         cudaStream_t stream);

// out[i] = bf16(in[i]).
absl::Status ToBf16Cuda(const float* in, int64_t n, __nv_bfloat16* out, cudaStream_t stream);

// out[i][:] = in[index[i]][:] for i < n; rows of `cols` bf16.
absl::Status GatherRowsCuda(const __nv_bfloat16* in, const int32_t* index, int n, int cols,
                            __nv_bfloat16* out, cudaStream_t stream);

// Decode GEMV: y[m][j] = sum_k x[m][k] * w[j][k] for m < rows <= kGemvMaxRows, fp32
// accumulation; w [n][k] bf16 row-major (a linear layer's weight), x [rows][k] bf16, y fp32
// [rows][n]. k must be a multiple of 8 and w, x 16-byte aligned. Reads w once whatever `rows`.
// Deterministic: the same inputs and options give the same bits on every run. One row runs on
// the CUDA cores; batches (rows >= 2) on the tensor cores (mma.sync: every weight byte feeds all
// rows at once), unless GemvOptions::cuda_cores.
inline constexpr int kGemvMaxRows = 8;

// How a GEMV launches; the defaults are what the overloads without options use.
struct GemvOptions {
  // Programmatic dependent launch (sm_90; kernels/cuda/launch.h): the GEMV may start while the
  // kernel launched just before it on the stream is still running, and streams its first
  // weights then; it reads x and writes y only after that kernel (and everything before it) has
  // completed, and lets the next kernel launched this way start early in turn. Contract: w is
  // not written by the kernel launched just before it. Also on whenever
  // resa::cuda::ProgrammaticLaunch() is (the default).
  bool overlap_previous = false;
  // Overrides for tuning and benchmarks (0: chosen from the shape by PlanGemv): warps of a
  // block splitting one output row's (or tile's) k (1, 2, 4, 8), and 16-byte weight loads a
  // lane issues together per output row (rounded up to 2, 4 or 8; at most 4 for batches on the
  // CUDA cores); on the tensor cores, 32-wide k steps of two loads each a lane issues together
  // (2, 4 or 8).
  int k_split = 0;
  int loads_per_lane = 0;
  // The previous kernel (loads through an unrolled loop), kept as the A/B baseline of
  // `resa-bench kernels --gemv`; ignores the fields above.
  bool legacy = false;
  // Batches (rows >= 2) on the CUDA-core kernel that one row uses (each warp two output rows,
  // 8 FMAs a weight at 8 rows), not the tensor cores: the A/B baseline of the benchmark.
  bool cuda_cores = false;
  // Batches on the tensor cores with bf16 x: how a tile's k steps go to the k_split warps of its
  // group. 1: contiguous slices; 2: batches of loads_per_lane steps dealt round-robin, so that
  // the group streams k_split consecutive batches of its 16 rows at a time (a different
  // summation order: other bits than 1); 0 chooses (GemvPlan::interleave). fp32 x always runs
  // contiguous slices.
  int k_order = 0;
};

// The launch PlanGemv chooses: 256-thread blocks of 8 warps. On the CUDA cores each warp owns
// one (rows == 1) or two output rows and 1 / k_split of their k, and a lane holds
// loads_per_lane 16-byte weight loads per row in flight. On the tensor cores (tensor_cores:
// rows >= 2) each group of k_split warps owns a tile of 16 output rows, and a lane holds
// 2 loads_per_lane weight loads in flight.
struct GemvPlan {
  int k_split = 1;
  int loads_per_lane = 2;
  int64_t blocks = 0;
  bool tensor_cores = false;
  // Tensor cores, bf16 x: batches dealt round-robin (GemvOptions::k_order 2). Chosen for more
  // than 512 tiles, and for fewer with k >= kGemvInterleaveMinK. The same for a GEMV and its
  // fused-epilogue twins, so they keep giving the same bits.
  bool interleave = false;
};
inline constexpr int kGemvInterleaveMinK = 4096;
// The automatic k split of batches on the CUDA cores (GemvOptions::cuda_cores) keeps slices at
// most this many 16-byte chunks.
inline constexpr int kGemvMaxSliceChunks = 600;
GemvPlan PlanGemv(int rows, int n, int k, const GemvOptions& options);

absl::Status GemvBf16Cuda(const __nv_bfloat16* w, const __nv_bfloat16* x, int rows, int n, int k,
                          float* y, cudaStream_t stream);
// The same with fp32 x (used as is, no bf16 rounding); x 16-byte aligned.
absl::Status GemvBf16Cuda(const __nv_bfloat16* w, const float* x, int rows, int n, int k,
                          float* y, cudaStream_t stream);
absl::Status GemvBf16Cuda(const __nv_bfloat16* w, const __nv_bfloat16* x, int rows, int n, int k,
                          float* y, cudaStream_t stream, const GemvOptions& options);
absl::Status GemvBf16Cuda(const __nv_bfloat16* w, const float* x, int rows, int n, int k,
                          float* y, cudaStream_t stream, const GemvOptions& options);

// The one-row GEMV with the greedy arg-max of its output (the lm_head of a greedy batch-1 step,
// in place of an arg-max kernel after it): y as GemvBf16Cuda(w, x, 1, n, k, y, options) stores
// it (the same bits), and *argmax = max(*argmax, max over j of key(y[j], j)), where key orders
// by value, then by the lower id; NaN never wins and -0 ties +0 (the CPU twin's arg-max). The
// caller zeroes *argmax (8-byte aligned, device memory) before the launch and reads the id with
// ArgMaxKeyId; a row of NaN gives id 0. options.legacy is refused.
absl::Status GemvArgMaxBf16Cuda(const __nv_bfloat16* w, const __nv_bfloat16* x, int n, int k,
                                float* y, uint64_t* argmax, cudaStream_t stream,
                                const GemvOptions& options = GemvOptions{});
// The id held by a GemvArgMaxBf16Cuda key (its low 32 bits hold ~id).
inline int32_t ArgMaxKeyId(uint64_t key) { return int32_t(~uint32_t(key)); }

// The RMSNorms of a decode step of 1-8 rows inside its GEMVs, so that they take no launch of
// their own: a GEMV whose input is given with a RowNorm reads x = g = bf16(h * w_norm) (the
// norm's output before its 1 / rms) and scales row m's sums by rsqrt(sum(h_m^2) / dim + eps)
// before its epilogue, both written by the GemvResidualBf16Cuda before it: g, and each row's
// sum(h_m^2) as `count` block sums (`squares`, row m's at [m count, (m + 1) count)). Every
// block adds those in the same order, so the GEMV is deterministic. Not bit for bit the GEMV
// of x = bf16(RmsNorm(h) * w_norm) (AddRmsNormCuda): the bf16 rounding comes before the scaling
// instead of after it (measured on random rows: 0.4% relative L2 of the gate_up activations).
// At most kRowNormMaxSquares block sums over all rows.
inline constexpr int kRowNormMaxSquares = 2048;
struct RowNorm {
  const float* squares = nullptr;  // nullptr: x is the GEMV's input as is
  int count = 0;                   // block sums a row; rows * count <= kRowNormMaxSquares
  int dim = 0;
  float eps = 0.0f;
};

// o_proj / down of 1-8 rows with the residual add and the next norm's inputs in the epilogue:
// h[m][j] += sum_k x[m][k] w[j][k] (the same fp32 sum as GemvBf16Cuda with `options`, added as
// AddRmsNormCuda adds it), g[m][j] = bf16(h[m][j] * next_w[j]), and squares[m * count + b] =
// the sum of the new h[m][j]^2 over block b's output rows (in row order), for b < count =
// GemvResidualSquares(rows, n, k, options): a RowNorm of h for the next GEMV. w [n][k] bf16;
// x [rows][k] bf16 or fp32 (as GemvBf16Cuda's); h, g [rows][n] (fp32, bf16); next_w [n] fp32.
// options.legacy is refused, and options.cuda_cores at more than one row.
int GemvResidualSquares(int rows, int n, int k, const GemvOptions& options = GemvOptions{});
absl::Status GemvResidualBf16Cuda(const __nv_bfloat16* w, const __nv_bfloat16* x, int rows, int n,
                                  int k, float* h, const float* next_w, __nv_bfloat16* g,
                                  float* squares, cudaStream_t stream,
                                  const GemvOptions& options = GemvOptions{});
absl::Status GemvResidualBf16Cuda(const __nv_bfloat16* w, const float* x, int rows, int n, int k,
                                  float* h, const float* next_w, __nv_bfloat16* g, float* squares,
                                  cudaStream_t stream, const GemvOptions& options = GemvOptions{});

// The gate_up GEMV with SwiGLU in its epilogue: act[m][i] = bf16(silu(g_mi) * u_mi), g = w rows
// [0, inter) . x[m], u = w rows [inter, 2 inter) . x[m] (w [2 inter][k], the gate_up weight; x
// [rows][k] bf16, rows <= kGemvMaxRows; act [rows][inter] bf16). Bit for bit
// GemvBf16Cuda(w, x, rows, 2 inter, k, gu, options) followed by SiluMulCuda(gu, rows, inter,
// act), for every plan with k_split <= 4 at one row (a block holds whole gate/up pairs; an
// automatic plan of 8 becomes 4) and every plan at more rows (a tensor-core tile holds 8
// pairs): one launch and the fp32 gu round trip less. options.legacy is refused, and k_split 8
// at one row and options.cuda_cores at more. With norm.squares set, x is a RowNorm input.
absl::Status GemvSwiGluBf16Cuda(const __nv_bfloat16* w, const __nv_bfloat16* x, int rows, int inter,
                                int k, __nv_bfloat16* act, cudaStream_t stream,
                                const GemvOptions& options = GemvOptions{},
                                const RowNorm& norm = RowNorm{});

// The QKV GEMV with the QKV epilogue fused: q, k, v = QkvRope of w . x, for p.rows <=
// kGemvMaxRows (p.qkv is not used; w [(H + 2 Hkv) d][k], the qkv weight; x [p.rows][k] bf16).
// Bit for bit GemvBf16Cuda(w, x, p.rows, (H + 2 Hkv) d, k, qkv, options) followed by
// QkvRopeCuda(p with qkv), for every plan with k_split <= 4 at one row (a block holds both rows
// of each RoPE pair; an automatic plan of 8 becomes 4) and every plan at more rows: one launch
// and the fp32 qkv round trip less. options.legacy is refused, and k_split 8 at one row and
// options.cuda_cores at more. With p.kv set it also appends every row's k and v to the cache
// (QkvRopeParams; p.page_table_stride > 0 for more than one row), in place of WriteKvCuda.
// Like the other GEMVs it lets the next kernel launch early (after its own wait); that kernel
// reads the new q, k and v only after its wait. p.positions and
// p.page_table are read before the programmatic-dependent-launch wait (the RoPE angles and the
// cache page are ready when the sums are): like w, they must not be written by the kernel
// launched just before this one. With norm.squares set, x is a RowNorm input.
absl::Status GemvQkvRopeBf16Cuda(const __nv_bfloat16* w, const __nv_bfloat16* x, int k,
                                 const QkvRopeParams& p, cudaStream_t stream,
                                 const GemvOptions& options = GemvOptions{},
                                 const RowNorm& norm = RowNorm{});

// out[r] = argmax_j logits[r][j] (ties to the lowest j; NaN never wins); logits fp32 [rows][n].
absl::Status ArgmaxCuda(const float* logits, int rows, int n, int32_t* out, cudaStream_t stream);

// Deterministic uniform noise: out[i] = offset + scale * u(seed, i), u in [-1, 1).
absl::Status FillUniformBf16Cuda(__nv_bfloat16* out, int64_t n, uint64_t seed, float scale,
                                 float offset, cudaStream_t stream);
absl::Status FillUniformF32Cuda(float* out, int64_t n, uint64_t seed, float scale, float offset,
                                cudaStream_t stream);

// Summaries of whole pages: for pages [0, num_pages), part 0 of (page, h) = min over the page's
// 16 keys, part 1 = max (k [pages][hkv][16][d] bf16; summary bf16 in the device layout of
// paged_kv_cuda.h, element SummaryIndex(page, h, part, i), a pool of at least
// SummaryPoolElems(num_pages) elements; slots of pages >= num_pages of the last group are left
// as they are). Used to summarise synthetic contexts; live pages are kept by the selection
// kernels themselves.
absl::Status SummarizePagesCuda(const __nv_bfloat16* k, int64_t num_pages, int num_kv_heads,
                                int head_dim, __nv_bfloat16* summary, cudaStream_t stream);

// Copies pages src[i] -> dst[i] (K, V and summary of every KV head; the summary in the device
// layout of paged_kv_cuda.h) for i < n within one layer's pool; src and dst device arrays of n
// page ids, disjoint page sets.
absl::Status CopyPagesCuda(const PagedKvCuda& kv, const int32_t* src, const int32_t* dst, int n,
                           cudaStream_t stream);

}  // namespace resa::cuda
