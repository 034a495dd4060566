// `resa-bench kernels --gemv`: the decode GEMV (the engine's CUDA model ops) on the real layer
// shapes at rows 1-8, the previous kernel, the new one (also with programmatic dependent launch),
// the CUDA-core kernel at batches and cuBLAS, over weight copies larger than the L2; with
// --gemv-sweep every plan the kernel offers, to calibrate PlanGemv.
#include "runtime/apps/kernels_bench_internal.h"

#if RESA_KERNELS_BENCH_GEMV
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/engine/cuda/model_ops_cuda.h"
#include "runtime/engine/cuda/skinny_gemm.h"

namespace resa::kernels_bench {
namespace {

// The decode linear layers of the two model shapes (weights [n][k] bf16); o_proj takes fp32 x.
// kv_heads: the qkv matrices' KV heads (head dim 128), for the QKV-epilogue sweep.
struct GemvShape {
  const char* model;
  const char* matrix;
  int n, k;
  bool fp32_x;
  int kv_heads = 0;
};
constexpr GemvShape kGemvShapes[] = {
    {"1.5B", "qkv", 2048, 1536, false, 2},
    {"1.5B", "o", 1536, 1536, true},
    {"1.5B", "gate_up", 17920, 1536, false},
    {"1.5B", "down", 1536, 8960, false},
    {"1.5B", "lm_head", 151936, 1536, false},
    {"7B", "qkv", 4608, 3584, false, 4},
    {"7B", "o", 3584, 3584, true},
    {"7B", "gate_up", 37888, 3584, false},
    {"7B", "down", 3584, 18944, false},
    {"7B", "lm_head", 152064, 3584, false},
};
constexpr int kGemvHeadDim = 128;

absl::Status Cublas(cublasStatus_t st, const char* what) {
  if (st == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": cuBLAS status ", int(st)));
}

struct GemvRow {
  std::string model, matrix;
  int rows;
  double legacy_us, new_us, pdl_us, cublas_us, cores_us, bytes;  // cores_us: rows >= 2 only
};

// One JSON line per (shape, rows, kernel): time per launch, bytes (weights + x + y), TB/s and
// the ratio to the copy ceiling of this run.
void EmitGemv(const GemvShape& s, int rows, const std::string& kernel, const cuda::GemvPlan* plan,
              double us, double bytes, double ceiling, double legacy_us, double cublas_us,
              const std::string& extra = "") {
  const double tbps = bytes / (us * 1e-6) / 1e12;
  std::printf(
      "{\"bench\":\"gemv\",\"model\":\"%s\",\"matrix\":\"%s\",\"n\":%d,\"k\":%d,\"rows\":%d,"
      "\"x\":\"%s\",\"kernel\":\"%s\",\"k_split\":%d,\"loads_per_lane\":%d,"
      "\"tensor_cores\":%s,\"interleave\":%s,\"blocks\":%lld,"
      "\"time_us\":%.3f,\"bytes\":%.0f,\"TBps\":%.3f,\"copy_ceiling_TBps\":%.3f,"
      "\"ratio_to_copy_ceiling\":%.3f,\"speedup_vs_legacy\":%.3f,\"speedup_vs_cublas\":%.3f%s}\n",
      s.model, s.matrix, s.n, s.k, rows, s.fp32_x ? "fp32" : "bf16", kernel.c_str(),
      plan ? plan->k_split : 0, plan ? plan->loads_per_lane : 0,
      plan && plan->tensor_cores ? "true" : "false",
      plan && plan->interleave && !s.fp32_x ? "true" : "false",  // fp32 x: contiguous
      plan ? static_cast<long long>(plan->blocks) : 0LL, us, bytes, tbps, ceiling, tbps / ceiling,
      legacy_us > 0 ? legacy_us / us : 0.0, cublas_us > 0 ? cublas_us / us : 0.0, extra.c_str());
  std::fflush(stdout);
}

// A cuBLAS handle with a 32 MB workspace, as CudaModel sets one up.
struct BenchCublas {
  cublasHandle_t handle = nullptr;
  DevMem ws;
  BenchCublas() = default;
  BenchCublas(const BenchCublas&) = delete;
  BenchCublas& operator=(const BenchCublas&) = delete;
  ~BenchCublas() {
    if (handle != nullptr) cublasDestroy(handle);
  }
  absl::Status Init() {
    if (auto st = Cublas(cublasCreate(&handle), "cublasCreate"); !st.ok()) return st;
    if (auto st = ws.Alloc(size_t(32) << 20); !st.ok()) return st;
    return Cublas(cublasSetWorkspace(handle, ws.p, ws.bytes), "workspace");
  }
};

// Every decode GEMV shape at rows 1, 2, 4, 8: the previous kernel (legacy), the new one, the new
// one with programmatic dependent launch (back-to-back GEMVs overlap), and cuBLAS (cublasGemmEx
// bf16 -> fp32 as CudaModel::Linear calls it; bf16 x also for o_proj, whose fp32-x GEMV has no
// cuBLAS twin) in the same run. Launches rotate over copies of the weights totalling at least
// --gemv-rotate-bytes, so each streams from HBM as in the real model.
absl::Status BenchGemv(const KernelsBenchOptions& o, double ceiling, std::vector<GemvRow>& table) {
  BenchCublas blas;
  if (auto st = blas.Init(); !st.ok()) return st;
  cublasHandle_t handle = blas.handle;
  const int max_rows = *std::max_element(o.gemv_rows.begin(), o.gemv_rows.end());
  for (const GemvShape& s : kGemvShapes) {
    if (std::find(o.models.begin(), o.models.end(), s.model) == o.models.end()) continue;
    if (!o.gemv_matrices.empty() && std::find(o.gemv_matrices.begin(), o.gemv_matrices.end(),
                                              s.matrix) == o.gemv_matrices.end()) {
      continue;
    }
    const size_t wbytes = size_t(s.n) * s.k * 2;
    const int copies = std::max(2, int(std::ceil(o.gemv_rotate_bytes / double(wbytes))));
    DevMem w, xb, xf, y, y2;
    if (auto st = w.Alloc(copies * wbytes); !st.ok()) return st;
    if (auto st = FillRandomBf16(w.p, w.bytes, 11); !st.ok()) return st;
    if (auto st = xb.Alloc(size_t(max_rows) * s.k * 2); !st.ok()) return st;
    if (auto st = FillRandomBf16(xb.p, xb.bytes, 12); !st.ok()) return st;
    if (auto st = xf.Alloc(size_t(max_rows) * s.k * 4); !st.ok()) return st;
    {
      std::vector<float> h(size_t(max_rows) * s.k);
      std::mt19937 rng(13);
      std::uniform_real_distribution<float> u(-2.0f, 2.0f);
      for (float& v : h) v = u(rng);
      if (auto st = Cuda(cudaMemcpy(xf.p, h.data(), xf.bytes, cudaMemcpyHostToDevice), "x");
          !st.ok())
        return st;
    }
    if (auto st = y.Alloc(size_t(max_rows) * s.n * 4); !st.ok()) return st;
    if (auto st = y2.Alloc(y.bytes); !st.ok()) return st;
    // The fused twins' outputs (bf16: act [rows][n / 2], or q, k, v) and RoPE positions.
    DevMem act, positions;
    if (auto st = act.Alloc(size_t(max_rows) * s.n * 2); !st.ok()) return st;
    {
      std::vector<int32_t> pos(max_rows);
      for (int r = 0; r < max_rows; ++r) pos[r] = 262144 - 1 - r;
      if (auto st = positions.Alloc(pos.size() * 4); !st.ok()) return st;
      if (auto st =
              Cuda(cudaMemcpy(positions.p, pos.data(), pos.size() * 4, cudaMemcpyHostToDevice),
                   "positions");
          !st.ok())
        return st;
    }
    // The fused-norm twins' extra inputs: the next norm's weights, g [rows][n], and block sums
    // of h^2 (a RowNorm input: kRowNormMaxSquares ones, at most).
    DevMem next_w, g_out, squares;
    if (auto st = next_w.Alloc(size_t(s.n) * 4); !st.ok()) return st;
    if (auto st = g_out.Alloc(size_t(max_rows) * s.n * 2); !st.ok()) return st;
    if (auto st = squares.Alloc(size_t(cuda::kRowNormMaxSquares) * 4); !st.ok()) return st;
    {
      const std::vector<float> ones(std::max<size_t>(size_t(s.n), cuda::kRowNormMaxSquares), 1.0f);
      if (auto st = Cuda(cudaMemcpy(next_w.p, ones.data(), next_w.bytes, cudaMemcpyHostToDevice),
                         "next_w");
          !st.ok())
        return st;
      if (auto st = Cuda(cudaMemcpy(squares.p, ones.data(), squares.bytes, cudaMemcpyHostToDevice),
                         "squares");
          !st.ok())
        return st;
    }
    auto wi = [&](int i) { return w.as<__nv_bfloat16>() + size_t(i % copies) * s.n * s.k; };
    auto gemv = [&](int i, int rows, const cuda::GemvOptions& opt, float* out, cudaStream_t st) {
      return s.fp32_x
                 ? cuda::GemvBf16Cuda(wi(i), xf.as<float>(), rows, s.n, s.k, out, st, opt)
                 : cuda::GemvBf16Cuda(wi(i), xb.as<__nv_bfloat16>(), rows, s.n, s.k, out, st, opt);
    };
    for (int rows : o.gemv_rows) {
      const double bytes =
          double(wbytes) + double(rows) * s.k * (s.fp32_x ? 4 : 2) + double(rows) * s.n * 4;
      cuda::GemvOptions legacy_opt, new_opt, pdl_opt;
      legacy_opt.legacy = true;
      pdl_opt.overlap_previous = true;
      auto time = [&](const cuda::GemvOptions& opt) {
        return TimeUs([&](int i, cudaStream_t st) { return gemv(i, rows, opt, y.as<float>(), st); },
                      o.gemv_iters);
      };
      auto legacy = time(legacy_opt);
      if (!legacy.ok()) return legacy.status();
      auto fresh = time(new_opt);
      if (!fresh.ok()) return fresh.status();
      auto pdl = time(pdl_opt);
      if (!pdl.ok()) return pdl.status();
      // Batches: the CUDA-core kernel that one row uses, the tensor-core kernel's baseline.
      cuda::GemvOptions cores_opt;
      cores_opt.cuda_cores = true;
      double cores_us = 0.0;
      if (rows > 1) {
        auto cores = time(cores_opt);
        if (!cores.ok()) return cores.status();
        cores_us = *cores;
      }
      const float one = 1.0f, zero = 0.0f;
      auto cublas = TimeUs(
          [&](int i, cudaStream_t st) {
            if (auto e = Cublas(cublasSetStream(handle, st), "cublasSetStream"); !e.ok()) return e;
            return Cublas(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, s.n, rows, s.k, &one,
                                       wi(i), CUDA_R_16BF, s.k, xb.p, CUDA_R_16BF, s.k, &zero, y.p,
                                       CUDA_R_32F, s.n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                          "cublasGemmEx");
          },
          o.gemv_iters);
      if (!cublas.ok()) return cublas.status();
      // Checks on weight copy 0: the new kernel is bitwise repeatable, and agrees with the legacy
      // kernel (same fp32 x) to summation-order rounding.
      const size_t ny = size_t(rows) * s.n;
      std::vector<float> a(ny), b(ny), c(ny);
      for (auto [opt, out, host] : {std::tuple{&new_opt, y.as<float>(), &a},
                                    {&new_opt, y2.as<float>(), &b},
                                    {&legacy_opt, y2.as<float>(), &c}}) {
        cudaMemset(out, 0xff, ny * 4);
        if (auto st = gemv(0, rows, *opt, out, nullptr); !st.ok()) return st;
        if (auto st = Cuda(cudaMemcpy(host->data(), out, ny * 4, cudaMemcpyDeviceToHost), "y");
            !st.ok())
          return st;
      }
      const bool repeatable = std::memcmp(a.data(), b.data(), ny * 4) == 0;
      double max_diff = 0, max_ref = 0;
      for (size_t i = 0; i < ny; ++i) {
        max_diff = std::max(max_diff, double(std::fabs(a[i] - c[i])));
        max_ref = std::max(max_ref, double(std::fabs(c[i])));
      }
      const std::string checks =
          absl::StrFormat(",\"repeatable\":%s,\"max_rel_diff_vs_legacy\":%.3g",
                          repeatable ? "true" : "false", max_diff / std::max(max_ref, 1e-30));
      const cuda::GemvPlan plan = cuda::PlanGemv(rows, s.n, s.k, new_opt);
      EmitGemv(s, rows, "legacy", nullptr, *legacy, bytes, ceiling, *legacy, *cublas);
      EmitGemv(s, rows, "new", &plan, *fresh, bytes, ceiling, *legacy, *cublas, checks);
      EmitGemv(s, rows, "new_pdl", &plan, *pdl, bytes, ceiling, *legacy, *cublas);
      EmitGemv(s, rows, "cublas", nullptr, *cublas, bytes, ceiling, *legacy, *cublas);
      if (rows > 1) {
        const cuda::GemvPlan cp = cuda::PlanGemv(rows, s.n, s.k, cores_opt);
        EmitGemv(s, rows, "cuda_cores", &cp, cores_us, bytes, ceiling, *legacy, *cublas);
      }
      table.push_back({s.model, s.matrix, rows, *legacy, *fresh, *pdl, *cublas, cores_us, bytes});
      if (!repeatable || max_diff > 1e-3 * max_ref) {
        return absl::InternalError(
            absl::StrFormat("GEMV %s %s rows %d: repeatable %d, max diff vs legacy %g (max |y| %g)",
                            s.model, s.matrix, rows, int(repeatable), max_diff, max_ref));
      }
      // The model's fused twin of this matrix (gate_up: the SwiGLU epilogue; qkv: bias and RoPE),
      // which plans as the plain kernel does (one row: at most 4 warps a row) but has its own
      // registers and epilogue: timed with the plan ("new_swiglu" / "new_qkv_rope") and, with
      // --gemv-sweep, under every plan.
      const bool swiglu = std::strcmp(s.matrix, "gate_up") == 0;
      const bool qkv_rope = s.kv_heads > 0;
      // With `norm` set, the twin reads a RowNorm input (the model's fused norms): count block
      // sums a row as the producer before it would write (GemvResidualSquares of o / down).
      auto time_twin = [&](const cuda::GemvOptions& opt,
                           const cuda::RowNorm& norm = {}) -> absl::StatusOr<double> {
        return TimeUs(
            [&](int i, cudaStream_t st) {
              if (swiglu) {
                return cuda::GemvSwiGluBf16Cuda(wi(i), xb.as<__nv_bfloat16>(), rows, s.n / 2, s.k,
                                                act.as<__nv_bfloat16>(), st, opt, norm);
              }
              cuda::QkvRopeParams rp;
              rp.rows = rows;
              rp.num_kv_heads = s.kv_heads;
              rp.head_dim = kGemvHeadDim;
              rp.num_heads = s.n / kGemvHeadDim - 2 * s.kv_heads;
              rp.positions = positions.as<int32_t>();
              rp.q = act.as<__nv_bfloat16>();
              rp.k = rp.q + size_t(rows) * rp.num_heads * kGemvHeadDim;
              rp.v = rp.k + size_t(rows) * s.kv_heads * kGemvHeadDim;
              return cuda::GemvQkvRopeBf16Cuda(wi(i), xb.as<__nv_bfloat16>(), s.k, rp, st, opt,
                                               norm);
            },
            o.gemv_iters);
      };
      if (swiglu || qkv_rope) {
        auto t = time_twin(new_opt);
        if (!t.ok()) return t.status();
        EmitGemv(s, rows, swiglu ? "new_swiglu" : "new_qkv_rope", &plan, *t, bytes, ceiling,
                 *legacy, *cublas);
        // (Block sums of o_proj's plan, hidden x hidden; down's, hidden x inter, are as many.)
        const cuda::RowNorm norm{squares.as<float>(), cuda::GemvResidualSquares(rows, s.k, s.k),
                                 s.k, 1e-6f};
        if (int64_t(rows) * norm.count <= cuda::kRowNormMaxSquares) {
          auto tn = time_twin(new_opt, norm);
          if (!tn.ok()) return tn.status();
          EmitGemv(s, rows, swiglu ? "new_swiglu_norm" : "new_qkv_rope_norm", &plan, *tn, bytes,
                   ceiling, *legacy, *cublas);
        }
      }
      // o_proj and down: the residual epilogue of the fused norms (h += the sums, g, block sums).
      if (std::strcmp(s.matrix, "o") == 0 || std::strcmp(s.matrix, "down") == 0) {
        auto t = TimeUs(
            [&](int i, cudaStream_t st) {
              __nv_bfloat16* g = g_out.as<__nv_bfloat16>();
              return s.fp32_x ? cuda::GemvResidualBf16Cuda(wi(i), xf.as<float>(), rows, s.n, s.k,
                                                           y.as<float>(), next_w.as<float>(), g,
                                                           squares.as<float>(), st, new_opt)
                              : cuda::GemvResidualBf16Cuda(
                                    wi(i), xb.as<__nv_bfloat16>(), rows, s.n, s.k, y.as<float>(),
                                    next_w.as<float>(), g, squares.as<float>(), st, new_opt);
            },
            o.gemv_iters);
        if (!t.ok()) return t.status();
        EmitGemv(s, rows, "new_residual", &plan, *t, bytes, ceiling, *legacy, *cublas);
      }
      if (!o.gemv_sweep) continue;
      // Every (k split, loads per lane) the kernel offers, to calibrate PlanGemv; the fused twin
      // too (its rows "sweep_swiglu" / "sweep_qkv_rope").
      for (int order : {1, 2}) {
        if (order == 2 && rows == 1) continue;
        for (int split : {1, 2, 4, 8}) {
          for (int u : {2, 4, 8}) {
            cuda::GemvOptions opt;
            opt.k_split = split;
            opt.loads_per_lane = u;
            opt.k_order = order;
            auto t = time(opt);
            if (!t.ok()) return t.status();
            const cuda::GemvPlan p = cuda::PlanGemv(rows, s.n, s.k, opt);
            EmitGemv(s, rows, "sweep", &p, *t, bytes, ceiling, *legacy, *cublas);
            if ((swiglu || qkv_rope) && (rows > 1 || split <= 4)) {
              auto tt = time_twin(opt);
              if (!tt.ok()) return tt.status();
              EmitGemv(s, rows, swiglu ? "sweep_swiglu" : "sweep_qkv_rope", &p, *tt, bytes, ceiling,
                       *legacy, *cublas);
            }
          }
        }
      }
    }
  }
  return absl::OkStatus();
}

struct SkinnyRow {
  std::string model, matrix;
  int rows;
  double skinny_us, cublas_us, bytes;
  double best_us = 0;  // the best unit shape (SkinnyGemmParams::k_sub, tile_rows)
  double swiglu_us = 0, cublas_silu_us = 0,
         swiglu_k128_us = 0;  // gate_up: the SwiGLU output against GEMM + SiluMul
};

// --skinny-rows: the linear layers of short chunks (a batch-1 rectification pass has 32 rows) on
// SkinnyGemm against cublasGemmEx (bf16 in, fp32 out) in the same run, weights rotated as above;
// for gate_up also SkinnyGemm's SwiGLU output against cuBLAS (bf16 out) + SiluMulCuda, the two
// ways CudaModel runs that layer. Checks that SkinnyGemm repeats bit for bit and agrees with
// cuBLAS to summation-order rounding.
absl::Status BenchSkinny(const KernelsBenchOptions& o, double ceiling,
                         std::vector<SkinnyRow>& table) {
  auto skinny = cuda::SkinnyGemm::Create();
  if (!skinny.ok()) {
    std::printf("{\"bench\":\"skinny\",\"skipped\":\"%s\"}\n",
                std::string(skinny.status().message()).c_str());
    return absl::OkStatus();
  }
  BenchCublas blas;
  if (auto st = blas.Init(); !st.ok()) return st;
  cublasHandle_t handle = blas.handle;
  const int max_rows = *std::max_element(o.skinny_rows.begin(), o.skinny_rows.end());
  for (const GemvShape& s : kGemvShapes) {
    if (std::find(o.models.begin(), o.models.end(), s.model) == o.models.end()) continue;
    if (std::strcmp(s.matrix, "lm_head") == 0) continue;  // not in a rectification pass
    if (!o.gemv_matrices.empty() && std::find(o.gemv_matrices.begin(), o.gemv_matrices.end(),
                                              s.matrix) == o.gemv_matrices.end()) {
      continue;
    }
    const size_t wbytes = size_t(s.n) * s.k * 2;
    const int copies = std::max(2, int(std::ceil(o.gemv_rotate_bytes / double(wbytes))));
    DevMem w, x, y, y2, gu, act;
    if (auto st = w.Alloc(copies * wbytes); !st.ok()) return st;
    if (auto st = FillRandomBf16(w.p, w.bytes, 21); !st.ok()) return st;
    if (auto st = x.Alloc(size_t(max_rows) * s.k * 2); !st.ok()) return st;
    if (auto st = FillRandomBf16(x.p, x.bytes, 22); !st.ok()) return st;
    if (auto st = y.Alloc(size_t(max_rows) * s.n * 4); !st.ok()) return st;
    if (auto st = y2.Alloc(y.bytes); !st.ok()) return st;
    if (auto st = gu.Alloc(size_t(max_rows) * s.n * 2); !st.ok()) return st;
    if (auto st = act.Alloc(size_t(max_rows) * s.n); !st.ok()) return st;
    auto wi = [&](int i) { return w.as<__nv_bfloat16>() + size_t(i % copies) * s.n * s.k; };
    const bool gate_up = std::strcmp(s.matrix, "gate_up") == 0;
    for (int rows : o.skinny_rows) {
      auto run = [&](int i, float* out, __nv_bfloat16* a, cudaStream_t st, int k_sub = 0,
                     int tile_rows = 0) {
        cuda::SkinnyGemmParams p;
        p.x = x.as<__nv_bfloat16>();
        p.w = wi(i);
        p.rows = rows, p.n = s.n, p.k = s.k, p.y = out, p.act = a;
        p.k_sub = k_sub, p.tile_rows = tile_rows;
        return (*skinny)->Run(p, st);
      };
      const float one = 1.0f, zero = 0.0f;
      auto cublas_gemm = [&](int i, void* out, cudaDataType_t type, cudaStream_t st) {
        if (auto e = Cublas(cublasSetStream(handle, st), "cublasSetStream"); !e.ok()) return e;
        return Cublas(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, s.n, rows, s.k, &one, wi(i),
                                   CUDA_R_16BF, s.k, x.p, CUDA_R_16BF, s.k, &zero, out, type, s.n,
                                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                      "cublasGemmEx");
      };
      auto t_skinny = TimeUs(
          [&](int i, cudaStream_t st) { return run(i, y.as<float>(), nullptr, st); }, o.gemv_iters);
      if (!t_skinny.ok()) return t_skinny.status();
      auto t_cublas =
          TimeUs([&](int i, cudaStream_t st) { return cublas_gemm(i, y.p, CUDA_R_32F, st); },
                 o.gemv_iters);
      if (!t_cublas.ok()) return t_cublas.status();
      SkinnyRow row{s.model,   s.matrix,
                    rows,      *t_skinny,
                    *t_cublas, double(wbytes) + double(rows) * s.k * 2 + double(rows) * s.n * 4};
      // The unit shapes (k slices a unit x tile rows) besides the default.
      std::vector<std::tuple<int, int, double>> variants;
      for (int k_sub : {2, 4}) {
        for (int tile_rows : {64, 128}) {
          auto t = TimeUs(
              [&](int i, cudaStream_t st) {
                return run(i, y.as<float>(), nullptr, st, k_sub, tile_rows);
              },
              o.gemv_iters);
          if (!t.ok()) return t.status();
          variants.emplace_back(k_sub, tile_rows, *t);
          row.best_us = row.best_us > 0 ? std::min(row.best_us, *t) : *t;
        }
      }
      if (gate_up) {
        auto t_swiglu = TimeUs(
            [&](int i, cudaStream_t st) { return run(i, nullptr, act.as<__nv_bfloat16>(), st); },
            o.gemv_iters);
        if (!t_swiglu.ok()) return t_swiglu.status();
        auto t_swiglu2 = TimeUs(
            [&](int i, cudaStream_t st) { return run(i, nullptr, act.as<__nv_bfloat16>(), st, 2); },
            o.gemv_iters);
        if (!t_swiglu2.ok()) return t_swiglu2.status();
        row.swiglu_k128_us = *t_swiglu2;
        auto t_silu = TimeUs(
            [&](int i, cudaStream_t st) {
              if (auto e = cublas_gemm(i, gu.p, CUDA_R_16BF, st); !e.ok()) return e;
              return cuda::SiluMulCuda(gu.as<__nv_bfloat16>(), rows, s.n / 2,
                                       act.as<__nv_bfloat16>(), st);
            },
            o.gemv_iters);
        if (!t_silu.ok()) return t_silu.status();
        row.swiglu_us = *t_swiglu;
        row.cublas_silu_us = *t_silu;
      }
      // Checks on weight copy 0.
      const size_t ny = size_t(rows) * s.n;
      std::vector<float> a(ny), b(ny), c(ny);
      for (auto [out, host, mine] : {std::tuple{y.as<float>(), &a, true},
                                     {y2.as<float>(), &b, true},
                                     {y2.as<float>(), &c, false}}) {
        cudaMemset(out, 0xff, ny * 4);
        if (auto st =
                mine ? run(0, out, nullptr, nullptr) : cublas_gemm(0, out, CUDA_R_32F, nullptr);
            !st.ok())
          return st;
        if (auto st = Cuda(cudaMemcpy(host->data(), out, ny * 4, cudaMemcpyDeviceToHost), "y");
            !st.ok())
          return st;
      }
      const bool repeatable = std::memcmp(a.data(), b.data(), ny * 4) == 0;
      double max_diff = 0, max_ref = 0;
      for (size_t i = 0; i < ny; ++i) {
        max_diff = std::max(max_diff, double(std::fabs(a[i] - c[i])));
        max_ref = std::max(max_ref, double(std::fabs(c[i])));
      }
      auto emit = [&](const char* kernel, double us, double vs) {
        const double tbps = row.bytes / (us * 1e-6) / 1e12;
        std::printf(
            "{\"bench\":\"skinny\",\"model\":\"%s\",\"matrix\":\"%s\",\"n\":%d,\"k\":%d,"
            "\"rows\":%d,\"kernel\":\"%s\",\"time_us\":%.3f,\"bytes\":%.0f,\"TBps\":%.3f,"
            "\"copy_ceiling_TBps\":%.3f,\"ratio_to_copy_ceiling\":%.3f,\"speedup_vs_cublas\":%.3f,"
            "\"repeatable\":%s,\"max_rel_diff_vs_cublas\":%.3g}\n",
            s.model, s.matrix, s.n, s.k, rows, kernel, us, row.bytes, tbps, ceiling, tbps / ceiling,
            vs / us, repeatable ? "true" : "false", max_diff / std::max(max_ref, 1e-30));
        std::fflush(stdout);
      };
      emit("skinny", row.skinny_us, row.cublas_us);
      for (const auto& [k_sub, tile_rows, us] : variants) {
        emit(absl::StrFormat("skinny_k%d_rows%d", 64 * k_sub, tile_rows).c_str(), us,
             row.cublas_us);
      }
      emit("cublas", row.cublas_us, row.cublas_us);
      if (gate_up) {
        emit("skinny_swiglu", row.swiglu_us, row.cublas_silu_us);
        emit("skinny_swiglu_k128", row.swiglu_k128_us, row.cublas_silu_us);
        emit("cublas_silu_mul", row.cublas_silu_us, row.cublas_silu_us);
      }
      table.push_back(row);
      if (!repeatable || max_diff > 1e-3 * max_ref) {
        return absl::InternalError(absl::StrFormat(
            "SkinnyGemm %s %s rows %d: repeatable %d, max diff vs cuBLAS %g (max |y| %g)", s.model,
            s.matrix, rows, int(repeatable), max_diff, max_ref));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

int RunGemvBench(const KernelsBenchOptions& o, double ceiling) {
  std::vector<GemvRow> table;
  // A 0 in a row list skips that section.
  auto wanted = [](std::vector<int> rows) {
    rows.erase(std::remove(rows.begin(), rows.end(), 0), rows.end());
    return rows;
  };
  KernelsBenchOptions run = o;
  run.gemv_rows = wanted(o.gemv_rows);
  run.skinny_rows = wanted(o.skinny_rows);
  absl::Status st = run.gemv_rows.empty() ? absl::OkStatus() : BenchGemv(run, ceiling, table);
  std::vector<SkinnyRow> skinny;
  if (st.ok() && !run.skinny_rows.empty()) st = BenchSkinny(run, ceiling, skinny);
  if (!skinny.empty()) {
    std::fprintf(
        stderr,
        "\nShort chunks (us per launch; TB/s share of the %.2f TB/s copy ceiling)\n"
        "| model | matrix | rows | SkinnyGemm | best unit | cuBLAS | x cuBLAS | skinny/ceil | "
        "SwiGLU out | cuBLAS + SiluMul | x |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        ceiling);
    for (const SkinnyRow& r : skinny) {
      const double tb = r.bytes / (r.skinny_us * 1e-6) / 1e12;
      std::fprintf(
          stderr, "| %s | %s | %d | %.2f | %.2f | %.2f | %.2f | %.0f%% | %s | %s | %s |\n",
          r.model.c_str(), r.matrix.c_str(), r.rows, r.skinny_us, r.best_us, r.cublas_us,
          r.cublas_us / r.skinny_us, 100 * tb / ceiling,
          r.swiglu_us > 0 ? absl::StrFormat("%.2f", r.swiglu_us).c_str() : "-",
          r.swiglu_us > 0 ? absl::StrFormat("%.2f", r.cublas_silu_us).c_str() : "-",
          r.swiglu_us > 0 ? absl::StrFormat("%.2f", r.cublas_silu_us / r.swiglu_us).c_str() : "-");
    }
  }
  if (!table.empty()) {
    std::fprintf(
        stderr,
        "\nGEMV (us per launch, graph of %d back-to-back launches; TB/s and share of the "
        "%.2f TB/s copy ceiling for the new kernel)\n"
        "| model | matrix | rows | legacy | CUDA cores | new | new+PDL | cuBLAS | new TB/s | "
        "new/ceil | PDL/ceil | x legacy | x cuBLAS |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        o.gemv_iters, ceiling);
    for (const GemvRow& r : table) {
      const double tb = r.bytes / (r.new_us * 1e-6) / 1e12;
      const double tp = r.bytes / (r.pdl_us * 1e-6) / 1e12;
      std::fprintf(
          stderr,
          "| %s | %s | %d | %.2f | %s | %.2f | %.2f | %.2f | %.2f | %.0f%% | %.0f%% | %.2f | "
          "%.2f |\n",
          r.model.c_str(), r.matrix.c_str(), r.rows, r.legacy_us,
          r.rows > 1 ? absl::StrFormat("%.2f", r.cores_us).c_str() : "-", r.new_us, r.pdl_us,
          r.cublas_us, tb, 100 * tb / ceiling, 100 * tp / ceiling, r.legacy_us / r.new_us,
          r.cublas_us / r.new_us);
    }
  }
  if (!st.ok()) {
    std::fprintf(stderr, "resa-bench kernels --gemv: %s\n", std::string(st.message()).c_str());
    std::printf("{\"bench\":\"gemv\",\"error\":\"%s\"}\n", std::string(st.message()).c_str());
    return 1;
  }
  return 0;
}

}  // namespace resa::kernels_bench

#endif  // RESA_KERNELS_BENCH_GEMV
