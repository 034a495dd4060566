// `resa-bench kernels`: the CUDA attention kernels on ReSA-sized problems, each timed against the
// device-copy ceiling and PyTorch SDPA (enable_gqa) measured in the same run. JSON lines on
// stdout, a summary table and the issue-4 targets (met / missed, with figures) on stderr.
//
// Every problem rotates over enough layers of KV that the working set exceeds the L2 cache, and
// times back-to-back launches with CUDA events (median of 5 repeats of --iters launches).
// `--gemv` times the decode GEMV instead (BenchGemv): the real layer shapes at rows 1-8, old and
// new kernel and cuBLAS, over weight copies larger than the L2.
#include "runtime/apps/kernels_bench.h"

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#if RESA_KERNELS_BENCH_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <tuple>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/selection_cuda.h"
#include "nlohmann/json.hpp"
#endif
#if RESA_KERNELS_BENCH_GEMV
#include <cublas_v2.h>

#include "runtime/engine/cuda/model_ops_cuda.h"
#endif

namespace resa {
namespace {

struct KernelsBenchOptions {
  std::vector<std::string> models = {"1.5B", "7B"};
  std::vector<int> contexts = {32768, 131072, 262144};
  std::vector<int> batches = {1, 8};
  int iters = 20;
  double rotate_bytes = 1.5e9;  // minimum working set per problem (L2 is 60 MB)
  bool sdpa = true;
  std::string python = "python3";
#ifdef RESA_KERNELS_BENCH_SCRIPT
  std::string sdpa_script = RESA_KERNELS_BENCH_SCRIPT;
#else
  std::string sdpa_script = "kernels/cuda/bench/sdpa_baseline.py";
#endif
  int prefill_tokens = 16384;
  // --gemv: the decode GEMV section instead of the attention kernels.
  bool gemv = false;
  bool gemv_sweep = false;  // also every (k split, loads per lane) of the new kernel
  std::vector<int> gemv_rows = {1, 2, 4, 8};
  std::vector<std::string> gemv_matrices;  // empty: every matrix (qkv, o, gate_up, down, lm_head)
  int gemv_iters = 200;
  double gemv_rotate_bytes = 256e6;  // weight copies per shape (L2 is 60 MB)
  // Programmatic dependent launch between the timed launches (kernels/cuda/launch.h). Off by
  // default: each kernel is timed on its own, as in earlier runs; the GEMV's "new_pdl" column
  // turns it on for that kernel alone.
  bool pdl = false;
  // The device's L2 fetch granularity in bytes while timing (as the CUDA model sets it).
  int l2_fetch = 128;
};

#if RESA_KERNELS_BENCH_CUDA

using cuda::kPageTokens;

struct ModelShape {
  std::string name;
  int hq, hkv, d;
};

bool ShapeFor(const std::string& name, ModelShape* s) {
  if (name == "1.5B")
    *s = {name, 12, 2, 128};  // DeepSeek-R1-Distill-Qwen-1.5B
  else if (name == "7B")
    *s = {name, 28, 4, 128};  // DeepSeek-R1-Distill-Qwen-7B
  else
    return false;
  return true;
}

absl::Status Cuda(cudaError_t err, const char* what) { return cuda::CudaStatus(err, what); }

// Owning device allocation.
struct DevMem {
  void* p = nullptr;
  size_t bytes = 0;
  DevMem() = default;
  DevMem(const DevMem&) = delete;
  DevMem& operator=(const DevMem&) = delete;
  ~DevMem() {
    if (p != nullptr) cudaFree(p);
  }
  absl::Status Alloc(size_t n) {
    bytes = n;
    return Cuda(cudaMalloc(&p, n > 0 ? n : 1), "cudaMalloc");
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

// Fills device memory with random finite bf16 (normal, sigma 1): replicates one random block.
absl::Status FillRandomBf16(void* dst, size_t bytes, uint32_t seed) {
  static std::vector<uint16_t> block;
  if (block.empty()) {
    block.resize(size_t(16) << 20);  // 32 MB
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (auto& x : block) {
      const float f = nd(rng);
      uint32_t u;
      std::memcpy(&u, &f, 4);
      x = uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
  }
  const size_t chunk = block.size() * 2;
  char* d = static_cast<char*>(dst);
  for (size_t off = 0; off < bytes; off += chunk) {
    const size_t n = std::min(chunk, bytes - off);
    if (off == 0) {
      if (auto st = Cuda(cudaMemcpy(d, block.data(), n, cudaMemcpyHostToDevice), "fill"); !st.ok())
        return st;
    } else {
      if (auto st = Cuda(cudaMemcpy(d + off, d, n, cudaMemcpyDeviceToDevice), "fill"); !st.ok())
        return st;
    }
  }
  return absl::OkStatus();
}

// Median microseconds per call of fn(i, stream): `iters` calls are captured into one CUDA graph
// and its replays are timed with events (5 repeats), so host launch overhead, which a decode
// step captured in a graph does not pay, stays out of the figure. Warm-up calls run first.
using BenchFn = std::function<absl::Status(int, cudaStream_t)>;
absl::StatusOr<double> TimeUs(const BenchFn& fn, int iters) {
  cudaDeviceSynchronize();  // earlier work on other streams shares buffers and the workspace
  cudaStream_t stream;
  if (auto st = Cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream"); !st.ok())
    return st;
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  absl::Status status;
  for (int w = 0; w < 3 && status.ok(); ++w) status = fn(w, stream);
  if (status.ok()) status = Cuda(cudaStreamSynchronize(stream), "warm-up");
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  if (status.ok())
    status = Cuda(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), "capture");
  if (status.ok()) {
    for (int i = 0; i < iters && status.ok(); ++i) status = fn(i, stream);
    const absl::Status end = Cuda(cudaStreamEndCapture(stream, &graph), "end capture");
    if (status.ok()) status = end;
  }
  if (status.ok()) status = Cuda(cudaGraphInstantiate(&exec, graph, 0), "graph instantiate");
  std::vector<double> samples;
  if (status.ok()) status = Cuda(cudaGraphLaunch(exec, stream), "graph warm-up");
  for (int rep = 0; rep < 5 && status.ok(); ++rep) {
    cudaEventRecord(start, stream);
    status = Cuda(cudaGraphLaunch(exec, stream), "graph launch");
    cudaEventRecord(stop, stream);
    if (status.ok()) status = Cuda(cudaEventSynchronize(stop), "kernel run");
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, start, stop);
    samples.push_back(ms * 1e3 / iters);
  }
  if (exec != nullptr) cudaGraphExecDestroy(exec);
  if (graph != nullptr) cudaGraphDestroy(graph);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaStreamDestroy(stream);
  if (!status.ok()) return status;
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

// Device-to-device copy, bytes read + written per second (the ceiling the kernels compare to).
// Timed eagerly: a copy captured in a graph becomes a copy-engine node (about 2.7 TB/s on the
// H200), while cudaMemcpyAsync on a stream runs the SM copy path (about 4.3 TB/s).
absl::StatusOr<double> CopyCeilingTBps() {
  const size_t bytes = size_t(2) << 30;
  DevMem a, b;
  if (auto st = a.Alloc(bytes); !st.ok()) return st;
  if (auto st = b.Alloc(bytes); !st.ok()) return st;
  if (auto st = FillRandomBf16(a.p, bytes, 1); !st.ok()) return st;
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<double> samples;
  absl::Status status;
  for (int rep = 0; rep < 7 && status.ok(); ++rep) {
    cudaEventRecord(start);
    for (int i = 0; i < 5; ++i) cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(stop);
    status = Cuda(cudaEventSynchronize(stop), "copy");
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, start, stop);
    if (rep > 0) samples.push_back(2.0 * bytes * 5 / (ms * 1e-3) / 1e12);  // rep 0 warms up
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (!status.ok()) return status;
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

struct SdpaResult {
  double sdpa_us = 0, topk_us = 0;
};
using SdpaKey = std::tuple<std::string, int, int>;  // model, context, batch

std::map<SdpaKey, SdpaResult> RunSdpa(const KernelsBenchOptions& o) {
  std::map<SdpaKey, SdpaResult> out;
  std::string cmd = absl::StrCat(o.python, " ", o.sdpa_script, " --iters ", o.iters);
  for (const auto& m : o.models) {
    ModelShape s;
    if (!ShapeFor(m, &s)) continue;
    for (int ctx : o.contexts) {
      for (int b : o.batches)
        absl::StrAppend(&cmd, " --shape ", m, ":", s.hq, ":", s.hkv, ":", s.d, ":", ctx, ":", b);
    }
  }
  std::fprintf(stderr, "running the SDPA baseline: %s\n", cmd.c_str());
  FILE* f = popen(cmd.c_str(), "r");
  if (f == nullptr) {
    std::printf("{\"bench\":\"sdpa\",\"error\":\"popen failed\"}\n");
    return out;
  }
  char line[4096];
  while (std::fgets(line, sizeof line, f) != nullptr) {
    std::fputs(line, stdout);  // the baseline's own JSON lines go to the same stream
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.contains("us")) continue;
    SdpaKey key{j.value("model", ""), j.value("context", 0), j.value("batch", 0)};
    if (j.value("bench", "") == "sdpa") out[key].sdpa_us = j["us"].get<double>();
    if (j.value("bench", "") == "torch_topk") out[key].topk_us = j["us"].get<double>();
  }
  const int rc = pclose(f);
  if (rc != 0)
    std::printf("{\"bench\":\"sdpa\",\"error\":\"baseline script exited with %d\"}\n", rc);
  std::fflush(stdout);
  return out;
}

struct Row {
  std::string kernel, model;
  int context, batch;
  double us, bytes, tbps, ratio, sdpa_us;
};

void Emit(std::vector<Row>& rows, const std::string& kernel, const ModelShape& s, int ctx,
          int batch, double us, double bytes, double ceiling, double sdpa_us, double flops = 0) {
  const double tbps = bytes / (us * 1e-6) / 1e12;
  std::printf(
      "{\"bench\":\"kernels\",\"kernel\":\"%s\",\"model\":\"%s\",\"q_heads\":%d,\"kv_heads\":%d,"
      "\"head_dim\":%d,\"context\":%d,\"batch\":%d,\"us\":%.3f,\"bytes\":%.0f,\"TBps\":%.3f,"
      "\"copy_ceiling_TBps\":%.3f,\"ratio_to_copy_ceiling\":%.3f,\"sdpa_us\":%.3f,"
      "\"speedup_vs_sdpa\":%.3f,\"TFLOPs\":%.1f}\n",
      kernel.c_str(), s.name.c_str(), s.hq, s.hkv, s.d, ctx, batch, us, bytes, tbps, ceiling,
      tbps / ceiling, sdpa_us, sdpa_us > 0 ? sdpa_us / us : 0.0,
      flops > 0 ? flops / us * 1e-6 : 0.0);
  std::fflush(stdout);
  rows.push_back({kernel, s.name, ctx, batch, us, bytes, tbps, tbps / ceiling, sdpa_us});
}

// A chunk kernel to time: which one, and whether the wgmma kernels may copy K/V tiles by TMA
// (else cp.async: the pool's extent withheld).
struct ChunkVariant {
  cuda::ChunkKernel kernel;
  bool tma;
  const char* name;
};

// Workspace of the mma.sync chunk kernel for the same problem (it splits differently).
size_t ChunkWorkspaceBytesMma(cuda::ChunkAttentionParams cp) {
  cp.kernel = cuda::ChunkKernel::kMmaSync;
  return cuda::ChunkAttentionWorkspaceBytes(cp);
}

// All kernels of one (model, context, batch) problem.
absl::Status BenchShape(const KernelsBenchOptions& o, const ModelShape& s, int ctx, int batch,
                        double ceiling, const SdpaResult& sdpa, std::vector<Row>& rows) {
  const int d = s.d, hkv = s.hkv, hq = s.hq;
  const int32_t pages_per_seq = ctx / kPageTokens + 1;  // room for the decode token
  const double kv_layer = 2.0 * batch * double(ctx) * hkv * d * 2;
  const int layers = std::max(2, int(std::ceil(o.rotate_bytes / kv_layer)));
  const size_t pages = size_t(layers) * batch * pages_per_seq;
  const size_t page_bytes = size_t(hkv) * kPageTokens * d * 2;
  DevMem k, v, summary, tables, lens, q, out, lse, ws, qchunk, ochunk, blocks, nblocks, knew, vnew;
  for (auto [mem, n] : {std::pair{&k, pages * page_bytes},
                        {&v, pages * page_bytes},
                        {&summary, pages * hkv * 2 * d * 2}}) {
    if (auto st = mem->Alloc(n); !st.ok()) return st;
    if (auto st = FillRandomBf16(mem->p, n, 2); !st.ok()) return st;
  }
  // Page tables [layer][batch][pages_per_seq], pages contiguous per sequence.
  std::vector<int32_t> h_tables(pages);
  for (size_t i = 0; i < pages; ++i) h_tables[i] = int32_t(i);
  if (auto st = tables.Alloc(pages * 4); !st.ok()) return st;
  cudaMemcpy(tables.p, h_tables.data(), pages * 4, cudaMemcpyHostToDevice);
  std::vector<int32_t> h_lens(batch, ctx);
  if (auto st = lens.Alloc(batch * 4); !st.ok()) return st;
  cudaMemcpy(lens.p, h_lens.data(), batch * 4, cudaMemcpyHostToDevice);
  for (auto [mem, n] : {std::pair{&q, size_t(batch) * hq * d * 2},
                        {&knew, size_t(batch) * hkv * d * 2},
                        {&vnew, size_t(batch) * hkv * d * 2},
                        {&qchunk, size_t(batch) * 32 * hq * d * 2}}) {
    if (auto st = mem->Alloc(n); !st.ok()) return st;
    if (auto st = FillRandomBf16(mem->p, n, 3); !st.ok()) return st;
  }
  if (auto st = out.Alloc(size_t(batch) * 32 * hq * d * 4); !st.ok()) return st;
  if (auto st = lse.Alloc(size_t(batch) * 32 * hq * 4); !st.ok()) return st;
  cuda::PagedKvCuda kv{
      k.as<__nv_bfloat16>(), v.as<__nv_bfloat16>(), summary.as<__nv_bfloat16>(), hkv, d,
      int32_t(pages)};
  auto table_of = [&](int layer) {
    return tables.as<int32_t>() + size_t(layer) * batch * pages_per_seq;
  };

  // Dense decode.
  cuda::DecodeAttentionParams dp;
  dp.kv = kv;
  dp.q = q.as<__nv_bfloat16>();
  dp.out = out.as<float>();
  dp.lse_ln = lse.as<float>();
  dp.batch = batch;
  dp.num_heads = hq;
  dp.scale = 1.0f / std::sqrt(float(d));
  dp.num_keys = lens.as<int32_t>();
  dp.page_table_stride = pages_per_seq;
  dp.max_num_keys = ctx;
  const int32_t m_blocks = (ctx + kPageTokens - 1) / kPageTokens;
  const int32_t n_sel = cuda::NumSelectedBlocksCuda(m_blocks, 0.1f, 16);
  cuda::DecodeAttentionParams sp = dp;
  sp.blocks_stride = n_sel;
  sp.max_num_blocks = n_sel;
  sp.blocks = reinterpret_cast<const int32_t*>(1);  // sizing only: set per layer below
  cuda::ChunkAttentionParams cp;
  cp.kv = kv;
  cp.q = qchunk.as<__nv_bfloat16>();
  cp.out = out.as<float>();
  cp.lse_ln = lse.as<float>();
  cp.num_heads = hq;
  cp.scale = dp.scale;
  cp.num_chunks = batch;
  cp.page_table_stride = pages_per_seq;
  cp.total_rows = 32 * batch;
  cp.max_rows = 32;
  cp.max_num_keys = ctx;
  cuda::SelectBlocksParams sel;
  sel.kv = kv;
  sel.hints = reinterpret_cast<uint32_t*>(1);  // sizing only (the workspace with hints)
  sel.q = q.as<__nv_bfloat16>();
  sel.k_new = knew.as<__nv_bfloat16>();
  sel.v_new = vnew.as<__nv_bfloat16>();
  sel.batch = batch;
  sel.num_heads = hq;
  sel.num_keys = lens.as<int32_t>();
  sel.page_table_stride = pages_per_seq;
  sel.max_num_keys = ctx;
  sel.blocks_stride = n_sel;
  // One zeroed workspace serves every launcher (the counters sit at its front).
  const size_t ws_bytes =
      std::max({cuda::DecodeAttentionWorkspaceBytes(dp), cuda::DecodeAttentionWorkspaceBytes(sp),
                cuda::ChunkAttentionWorkspaceBytes(cp), ChunkWorkspaceBytesMma(cp),
                cuda::SelectBlocksWorkspaceBytes(sel)});
  if (auto st = ws.Alloc(ws_bytes); !st.ok()) return st;
  cudaMemset(ws.p, 0, ws_bytes);
  sel.hints = nullptr;
  dp.workspace = sp.workspace = cp.workspace = sel.workspace = ws.p;
  dp.workspace_bytes = sp.workspace_bytes = cp.workspace_bytes = sel.workspace_bytes = ws_bytes;

  auto dense = TimeUs(
      [&](int i, cudaStream_t st) {
        dp.page_tables = table_of(i % layers);
        return cuda::DecodeAttentionCuda(dp, st);
      },
      o.iters);
  if (!dense.ok()) return dense.status();
  Emit(rows, "dense_decode", s, ctx, batch, *dense, kv_layer, ceiling, sdpa.sdpa_us);

  // Fused selection (writes the decode token, scores every block, top-n); per layer its blocks
  // feed the sparse decode below.
  if (auto st = blocks.Alloc(size_t(layers) * batch * hkv * n_sel * 4); !st.ok()) return st;
  if (auto st = nblocks.Alloc(size_t(layers) * batch * 4); !st.ok()) return st;
  auto select = [&](int i, cudaStream_t st) {
    const int layer = i % layers;
    sel.page_tables = table_of(layer);
    sel.blocks = blocks.as<int32_t>() + size_t(layer) * batch * hkv * n_sel;
    sel.num_blocks = nblocks.as<int32_t>() + size_t(layer) * batch;
    return cuda::SelectBlocksCuda(sel, st);
  };
  for (int l = 0; l < layers; ++l) {
    if (auto st = select(l, nullptr); !st.ok()) return st;
  }
  auto sel_us = TimeUs(select, o.iters);
  if (!sel_us.ok()) return sel_us.status();
  const double sel_bytes = double(batch) * m_blocks * hkv * 2 * d * 2;  // bf16 min/max rows
  Emit(rows, "fused_select", s, ctx, batch, *sel_us, sel_bytes, ceiling, sdpa.topk_us);
  // With threshold hints (SelectBlocksParams::hints), two bounds on what they save: each layer
  // keeping its own hint, so every launch repeats its layer's previous one (the best case), and
  // one hint shared by all layers, so each launch starts from another layer's threshold (random
  // summaries of the same distribution). The e2e bench measures how often real steps hit.
  DevMem hints;
  if (auto st = hints.Alloc(size_t(layers) * batch * hkv * 4); !st.ok()) return st;
  double hinted_other_us = 0;
  for (const bool per_layer : {true, false}) {
    cudaMemset(hints.p, 0, size_t(layers) * batch * hkv * 4);
    auto hinted = [&](int i, cudaStream_t st) {
      sel.hints = hints.as<uint32_t>() + (per_layer ? size_t(i % layers) * batch * hkv : 0);
      absl::Status r = select(i, st);
      sel.hints = nullptr;
      return r;
    };
    for (int l = 0; l < layers; ++l) {
      if (auto st = hinted(l, nullptr); !st.ok()) return st;
    }
    cudaDeviceSynchronize();
    auto before = cuda::ReadSelectionHintCounts();
    auto us = TimeUs(hinted, o.iters);
    if (!us.ok()) return us.status();
    auto after = cuda::ReadSelectionHintCounts();
    const char* name = per_layer ? "fused_select_hint_repeat" : "fused_select_hint_other_layer";
    Emit(rows, name, s, ctx, batch, *us, sel_bytes, ceiling, sdpa.topk_us);
    if (!per_layer) hinted_other_us = *us;
    if (before.ok() && after.ok()) {
      std::printf(
          "{\"bench\":\"kernels\",\"kernel\":\"%s_tally\",\"model\":\"%s\","
          "\"context\":%d,\"batch\":%d,\"hinted_rows\":%lld,\"whole_tail_rows\":%lld}\n",
          name, s.name.c_str(), ctx, batch,
          static_cast<long long>(after->from_candidates - before->from_candidates),
          static_cast<long long>(after->whole_tail - before->whole_tail));
    }
  }
  cudaDeviceSynchronize();  // the sparse decode reads the selection of every layer

  auto sparse = TimeUs(
      [&](int i, cudaStream_t st) {
        const int layer = i % layers;
        sp.page_tables = table_of(layer);
        sp.blocks = blocks.as<int32_t>() + size_t(layer) * batch * hkv * n_sel;
        sp.num_blocks = nblocks.as<int32_t>() + size_t(layer) * batch;
        return cuda::DecodeAttentionCuda(sp, st);
      },
      o.iters);
  if (!sparse.ok()) return sparse.status();
  const double sparse_bytes = 2.0 * batch * hkv * double(n_sel) * kPageTokens * d * 2;
  Emit(rows, "sparse_decode", s, ctx, batch, *sparse, sparse_bytes, ceiling, sdpa.sdpa_us);

  // Rectification: 32 query tokens per sequence at the end of its context.
  std::vector<int32_t> offs(batch + 1), firsts(batch, ctx - 31);
  for (int b = 0; b <= batch; ++b) offs[b] = 32 * b;
  DevMem doffs, dfirst;
  if (auto st = doffs.Alloc((batch + 1) * 4); !st.ok()) return st;
  if (auto st = dfirst.Alloc(batch * 4); !st.ok()) return st;
  cudaMemcpy(doffs.p, offs.data(), (batch + 1) * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dfirst.p, firsts.data(), batch * 4, cudaMemcpyHostToDevice);
  cp.row_offsets = doffs.as<int32_t>();
  cp.first_num_keys = dfirst.as<int32_t>();
  auto rect = TimeUs(
      [&](int i, cudaStream_t st) {
        cp.page_tables = table_of(i % layers);
        return cuda::ChunkAttentionCuda(cp, st);
      },
      o.iters);
  if (!rect.ok()) return rect.status();
  const double rect_flops = 4.0 * batch * 32 * hq * double(ctx) * d;
  Emit(rows, "rectify_chunk32", s, ctx, batch, *rect, kv_layer, ceiling, sdpa.sdpa_us, rect_flops);
  // The same chunks on each kernel the default chooses from: mma.sync (the baseline), wgmma
  // (2 or 3 warpgroups, all loading) and the warp-specialised wgmma kernel, that one also with
  // its producer's K/V copies by cp.async instead of TMA (the pool's extent withheld).
  for (const ChunkVariant& var :
       {ChunkVariant{cuda::ChunkKernel::kMmaSync, false, "rectify_chunk32_mma"},
        ChunkVariant{cuda::ChunkKernel::kWgmma, false, "rectify_chunk32_wgmma"},
        ChunkVariant{cuda::ChunkKernel::kWgmmaWs, true, "rectify_chunk32_ws"},
        ChunkVariant{cuda::ChunkKernel::kWgmmaWs, false, "rectify_chunk32_ws_cpasync"}}) {
    const auto& [kernel, tma, name] = var;
    cuda::ChunkAttentionParams cpk = cp;
    cpk.kernel = kernel;
    if (!tma) cpk.kv.num_pages = 0;
    auto us = TimeUs(
        [&](int i, cudaStream_t st) {
          cpk.page_tables = table_of(i % layers);
          return cuda::ChunkAttentionCuda(cpk, st);
        },
        o.iters);
    if (!us.ok()) return us.status();
    Emit(rows, name, s, ctx, batch, *us, kv_layer, ceiling, sdpa.sdpa_us, rect_flops);
  }

  const double step = *sel_us + *sparse + *rect / 32.0;
  Emit(rows, "resa_step", s, ctx, batch, step, sel_bytes + sparse_bytes + kv_layer / 32, ceiling,
       sdpa.sdpa_us);
  // The same step with the selection as the model's steps run it, from a threshold hint; the
  // other layer's hint is the conservative one of the two above (a real step's own hint comes
  // from the same layer one token earlier).
  Emit(rows, "resa_step_hinted", s, ctx, batch, hinted_other_us + *sparse + *rect / 32.0,
       sel_bytes + sparse_bytes + kv_layer / 32, ceiling, sdpa.sdpa_us);
  // The step as the model's decode runs it: per layer the hinted selection (one hint shared by
  // the layers, as resa_step_hinted) and then the sparse decode of its blocks, back to back with
  // programmatic dependent launch (the model's default; the rows above time each kernel alone,
  // a launch gap each, unless --pdl). The rectification chunk as above.
  {
    const bool pdl_before = cuda::ProgrammaticLaunch();
    cuda::SetProgrammaticLaunch(true);
    cudaMemset(hints.p, 0, size_t(layers) * batch * hkv * 4);
    auto pair = TimeUs(
        [&](int i, cudaStream_t st) {
          const int layer = i % layers;
          sel.hints = hints.as<uint32_t>();
          absl::Status r = select(i, st);
          sel.hints = nullptr;
          if (!r.ok()) return r;
          sp.page_tables = table_of(layer);
          sp.blocks = blocks.as<int32_t>() + size_t(layer) * batch * hkv * n_sel;
          sp.num_blocks = nblocks.as<int32_t>() + size_t(layer) * batch;
          return cuda::DecodeAttentionCuda(sp, st);
        },
        o.iters);
    cuda::SetProgrammaticLaunch(pdl_before);
    if (!pair.ok()) return pair.status();
    Emit(rows, "resa_step_chained", s, ctx, batch, *pair + *rect / 32.0,
         sel_bytes + sparse_bytes + kv_layer / 32, ceiling, sdpa.sdpa_us);
  }
  return absl::OkStatus();
}

// Dense causal prefill of one prompt (one chunk, first_num_keys = 1): tensor-core throughput.
absl::Status BenchPrefill(const KernelsBenchOptions& o, const ModelShape& s, double ceiling,
                          std::vector<Row>& rows) {
  const int n = o.prefill_tokens, d = s.d;
  const int32_t pages_per_seq = n / kPageTokens + 1;
  DevMem k, v, tables, q, out, offs, first, ws;
  const size_t page_bytes = size_t(s.hkv) * kPageTokens * d * 2;
  for (auto* m : {&k, &v}) {
    if (auto st = m->Alloc(pages_per_seq * page_bytes); !st.ok()) return st;
    if (auto st = FillRandomBf16(m->p, m->bytes, 4); !st.ok()) return st;
  }
  if (auto st = q.Alloc(size_t(n) * s.hq * d * 2); !st.ok()) return st;
  if (auto st = FillRandomBf16(q.p, q.bytes, 5); !st.ok()) return st;
  if (auto st = out.Alloc(size_t(n) * s.hq * d * 4); !st.ok()) return st;
  std::vector<int32_t> t(pages_per_seq), off = {0, n}, f = {1};
  for (int i = 0; i < pages_per_seq; ++i) t[i] = i;
  for (auto [m, src] : {std::pair{&tables, &t}, {&offs, &off}, {&first, &f}}) {
    if (auto st = m->Alloc(src->size() * 4); !st.ok()) return st;
    cudaMemcpy(m->p, src->data(), src->size() * 4, cudaMemcpyHostToDevice);
  }
  cuda::ChunkAttentionParams cp;
  cp.kv = {k.as<__nv_bfloat16>(), v.as<__nv_bfloat16>(), nullptr, s.hkv, d, pages_per_seq};
  cp.q = q.as<__nv_bfloat16>();
  cp.out = out.as<float>();
  cp.num_heads = s.hq;
  cp.scale = 1.0f / std::sqrt(float(d));
  cp.num_chunks = 1;
  cp.row_offsets = offs.as<int32_t>();
  cp.first_num_keys = first.as<int32_t>();
  cp.page_tables = tables.as<int32_t>();
  cp.page_table_stride = pages_per_seq;
  cp.total_rows = n;
  cp.max_rows = n;
  cp.max_num_keys = n;
  const size_t ws_bytes =
      std::max(cuda::ChunkAttentionWorkspaceBytes(cp), ChunkWorkspaceBytesMma(cp));
  if (auto st = ws.Alloc(ws_bytes); !st.ok()) return st;
  cp.workspace = ws.p;
  cp.workspace_bytes = ws.bytes;
  const double flops = 2.0 * double(n) * n * s.hq * d;  // causal: half of 4 n^2 h d
  // The default kernel (wgmma on sm_90), then the mma.sync kernel as its baseline and the
  // warp-specialised wgmma kernel (TMA and cp.async copies).
  for (const ChunkVariant& var :
       {ChunkVariant{cuda::ChunkKernel::kAuto, true, "prefill_causal"},
        ChunkVariant{cuda::ChunkKernel::kMmaSync, false, "prefill_causal_mma"},
        ChunkVariant{cuda::ChunkKernel::kWgmmaWs, true, "prefill_causal_ws"},
        ChunkVariant{cuda::ChunkKernel::kWgmmaWs, false, "prefill_causal_ws_cpasync"}}) {
    const auto& [kernel, tma, name] = var;
    cp.kernel = kernel;
    cp.kv.num_pages = tma ? pages_per_seq : 0;
    auto us = TimeUs([&](int, cudaStream_t st) { return cuda::ChunkAttentionCuda(cp, st); },
                     std::max(3, o.iters / 4));
    if (!us.ok()) return us.status();
    Emit(rows, name, s, n, 1, *us, 2.0 * n * s.hkv * d * 2, ceiling, 0.0, flops);
  }
  return absl::OkStatus();
}

#if RESA_KERNELS_BENCH_GEMV

// The decode linear layers of the two model shapes (weights [n][k] bf16); o_proj takes fp32 x.
struct GemvShape {
  const char* model;
  const char* matrix;
  int n, k;
  bool fp32_x;
};
constexpr GemvShape kGemvShapes[] = {
    {"1.5B", "qkv", 2048, 1536, false},
    {"1.5B", "o", 1536, 1536, true},
    {"1.5B", "gate_up", 17920, 1536, false},
    {"1.5B", "down", 1536, 8960, false},
    {"1.5B", "lm_head", 151936, 1536, false},
    {"7B", "qkv", 4608, 3584, false},
    {"7B", "o", 3584, 3584, true},
    {"7B", "gate_up", 37888, 3584, false},
    {"7B", "down", 3584, 18944, false},
};

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

// Every decode GEMV shape at rows 1, 2, 4, 8: the previous kernel (legacy), the new one, the new
// one with programmatic dependent launch (back-to-back GEMVs overlap), and cuBLAS (cublasGemmEx
// bf16 -> fp32 as CudaModel::Linear calls it; bf16 x also for o_proj, whose fp32-x GEMV has no
// cuBLAS twin) in the same run. Launches rotate over copies of the weights totalling at least
// --gemv-rotate-bytes, so each streams from HBM as in the real model.
absl::Status BenchGemv(const KernelsBenchOptions& o, double ceiling, std::vector<GemvRow>& table) {
  cublasHandle_t handle;
  if (auto st = Cublas(cublasCreate(&handle), "cublasCreate"); !st.ok()) return st;
  std::unique_ptr<cublasContext, cublasStatus_t (*)(cublasHandle_t)> owner(handle, cublasDestroy);
  DevMem cublas_ws;
  if (auto st = cublas_ws.Alloc(size_t(32) << 20); !st.ok()) return st;
  if (auto st = Cublas(cublasSetWorkspace(handle, cublas_ws.p, cublas_ws.bytes), "workspace");
      !st.ok())
    return st;
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
      if (!o.gemv_sweep) continue;
      // Every (k split, loads per lane) the kernel offers, to calibrate PlanGemv.
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
          }
        }
      }
    }
  }
  return absl::OkStatus();
}

int RunGemvBench(const KernelsBenchOptions& o, double ceiling) {
  std::vector<GemvRow> table;
  const absl::Status st = BenchGemv(o, ceiling, table);
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
  if (!st.ok()) {
    std::fprintf(stderr, "resa-bench kernels --gemv: %s\n", std::string(st.message()).c_str());
    std::printf("{\"bench\":\"gemv\",\"error\":\"%s\"}\n", std::string(st.message()).c_str());
    return 1;
  }
  return 0;
}

#endif  // RESA_KERNELS_BENCH_GEMV

const Row* Find(const std::vector<Row>& rows, const std::string& kernel, const std::string& model,
                int ctx, int batch) {
  for (const Row& r : rows) {
    if (r.kernel == kernel && r.model == model && r.context == ctx && r.batch == batch) return &r;
  }
  return nullptr;
}

void Target(const std::string& what, bool met, const std::string& figure) {
  std::printf("{\"bench\":\"target\",\"target\":\"%s\",\"met\":%s,\"figure\":\"%s\"}\n",
              what.c_str(), met ? "true" : "false", figure.c_str());
  std::fprintf(stderr, "  [%s] %s: %s\n", met ? "MET " : "MISS", what.c_str(), figure.c_str());
}

int RunKernelsBench(const KernelsBenchOptions& o) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "resa-bench kernels: no CUDA device\n");
    std::printf("{\"bench\":\"kernels\",\"error\":\"no CUDA device\"}\n");
    return 1;
  }
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  cuda::SetProgrammaticLaunch(o.pdl);
  cuda::SetL2FetchGranularity(o.l2_fetch);
  if (absl::Status st = cuda::ApplyL2FetchGranularity(); !st.ok()) {
    std::fprintf(stderr, "resa-bench kernels: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  std::map<SdpaKey, SdpaResult> sdpa;
  if (o.sdpa && !o.gemv) sdpa = RunSdpa(o);
  auto ceiling = CopyCeilingTBps();
  if (!ceiling.ok()) {
    std::fprintf(stderr, "resa-bench kernels: %s\n",
                 std::string(ceiling.status().message()).c_str());
    return 1;
  }
  std::printf(
      "{\"bench\":\"copy_ceiling\",\"device\":\"%s\",\"sms\":%d,\"TBps\":%.3f,\"l2_fetch\":%d}\n",
      prop.name, prop.multiProcessorCount, *ceiling, o.l2_fetch);
  if (o.gemv) {
#if RESA_KERNELS_BENCH_GEMV
    return RunGemvBench(o, *ceiling);
#else
    std::fprintf(stderr, "resa-bench kernels --gemv: built without the engine's CUDA ops\n");
    std::printf("{\"bench\":\"gemv\",\"skipped\":\"built without the engine's CUDA ops\"}\n");
    return 1;
#endif
  }
  std::vector<Row> rows;
  for (const auto& name : o.models) {
    ModelShape s;
    if (!ShapeFor(name, &s)) {
      std::fprintf(stderr, "resa-bench kernels: unknown model shape %s (1.5B, 7B)\n", name.c_str());
      return 1;
    }
    for (int ctx : o.contexts) {
      for (int b : o.batches) {
        if (auto st = BenchShape(o, s, ctx, b, *ceiling, sdpa[{name, ctx, b}], rows); !st.ok()) {
          std::fprintf(stderr, "resa-bench kernels: %s ctx %d batch %d: %s\n", name.c_str(), ctx, b,
                       std::string(st.message()).c_str());
          return 1;
        }
      }
    }
    if (o.prefill_tokens > 0) {
      if (auto st = BenchPrefill(o, s, *ceiling, rows); !st.ok()) {
        std::fprintf(stderr, "resa-bench kernels: prefill: %s\n",
                     std::string(st.message()).c_str());
        return 1;
      }
    }
  }

  std::fprintf(stderr, "\ncopy ceiling %.2f TB/s on %s\n", *ceiling, prop.name);
  std::fprintf(stderr,
               "| kernel | model | ctx | batch | us | TB/s | of ceiling | SDPA us | x SDPA |\n"
               "|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const Row& r : rows) {
    std::fprintf(stderr, "| %s | %s | %d | %d | %.1f | %.2f | %.0f%% | %.1f | %.2f |\n",
                 r.kernel.c_str(), r.model.c_str(), r.context, r.batch, r.us, r.tbps, 100 * r.ratio,
                 r.sdpa_us, r.sdpa_us > 0 ? r.sdpa_us / r.us : 0.0);
  }
  std::fprintf(stderr, "\ntargets (issue 4):\n");
  for (const auto& m : o.models) {
    for (int b : o.batches) {
      for (int ctx : o.contexts) {
        const Row* dn = Find(rows, "dense_decode", m, ctx, b);
        if (dn != nullptr && dn->sdpa_us > 0) {
          Target(absl::StrFormat("dense decode %s ctx %d batch %d not slower than SDPA", m, ctx, b),
                 dn->us <= dn->sdpa_us,
                 absl::StrFormat("%.1f us vs SDPA %.1f us", dn->us, dn->sdpa_us));
        }
      }
      const int ctx = 262144;
      if (const Row* r = Find(rows, "dense_decode", m, ctx, b)) {
        Target(absl::StrFormat("dense decode %s 256K batch %d >= 90%% of copy ceiling", m, b),
               r->ratio >= 0.9, absl::StrFormat("%.1f%% (%.2f TB/s)", 100 * r->ratio, r->tbps));
      }
      if (const Row* r = Find(rows, "sparse_decode", m, ctx, b)) {
        Target(absl::StrFormat("sparse decode %s 256K batch %d >= 80%% of copy ceiling", m, b),
               r->ratio >= 0.8,
               absl::StrFormat("%.1f%% (%.2f TB/s, %.1f us)", 100 * r->ratio, r->tbps, r->us));
      }
      if (const Row* r = Find(rows, "fused_select", m, ctx, b); r != nullptr && b == 1) {
        Target(absl::StrFormat("fused selection %s 256K batch 1 <= 10 us", m), r->us <= 10.0,
               absl::StrFormat("%.2f us (torch.topk alone %.1f us)", r->us, r->sdpa_us));
      }
      // The plain selection; hinted from another layer; and hinted, chained with the sparse
      // decode as the model's steps run them (PDL).
      for (const char* kind : {"resa_step", "resa_step_hinted", "resa_step_chained"}) {
        const Row* r = Find(rows, kind, m, ctx, b);
        if (r == nullptr || r->sdpa_us <= 0) continue;
        const double need = b >= 8 ? 3.5 : 2.5;
        const std::string how = kind == std::string("resa_step")          ? ""
                                : kind == std::string("resa_step_hinted") ? ", hinted selection"
                                                                          : ", chained (PDL)";
        const std::string note = kind == std::string("resa_step") ? ""
                                 : kind == std::string("resa_step_hinted")
                                     ? "; selection hinted from another layer"
                                     : "; hinted selection and sparse decode back to back, PDL";
        Target(absl::StrFormat("ReSA step %s 256K batch %d >= %.1fx SDPA%s", m, b, need, how),
               r->sdpa_us / r->us >= need,
               absl::StrFormat("%.2fx (%.1f us vs %.1f us%s)", r->sdpa_us / r->us, r->us,
                               r->sdpa_us, note));
      }
      if (const Row* r = Find(rows, "rectify_chunk32", m, ctx, b)) {
        const double read_us = r->bytes / (*ceiling * 1e12) * 1e6;
        Target(absl::StrFormat("rectification chunk %s 256K batch %d within 1.3x of one KV read", m,
                               b),
               r->us <= 1.3 * read_us,
               absl::StrFormat("%.2fx (%.1f us vs %.1f us)", r->us / read_us, r->us, read_us));
      }
    }
  }
  return 0;
}

#else  // no CUDA in this build

int RunKernelsBench(const KernelsBenchOptions&) {
  std::fprintf(
      stderr,
      "resa-bench kernels: this build has no CUDA (nvcc was not found at configure time)\n");
  std::printf("{\"bench\":\"kernels\",\"skipped\":\"built without CUDA\"}\n");
  return 0;
}

#endif

}  // namespace

void AddKernelsBenchCommand(CLI::App& app, int& exit_code) {
  auto o = std::make_shared<KernelsBenchOptions>();
  CLI::App* k =
      app.add_subcommand("kernels", "CUDA attention kernels vs copy ceiling and PyTorch SDPA");
  k->add_option("--models", o->models, "Model shapes (1.5B, 7B)")
      ->delimiter(',')
      ->capture_default_str();
  k->add_option("--contexts", o->contexts, "Context lengths")
      ->delimiter(',')
      ->capture_default_str();
  k->add_option("--batches", o->batches, "Batch sizes")->delimiter(',')->capture_default_str();
  k->add_option("--iters", o->iters, "Launches per timing repeat")
      ->capture_default_str()
      ->check(CLI::Range(1, 10000));
  k->add_option("--rotate-bytes", o->rotate_bytes, "Minimum KV working set per problem")
      ->capture_default_str();
  k->add_option("--prefill-tokens", o->prefill_tokens,
                "Prompt length of the prefill benchmark (0: skip)")
      ->capture_default_str();
  k->add_flag("!--no-sdpa", o->sdpa, "Skip the PyTorch baseline");
  k->add_option("--python", o->python, "Python with torch for the baseline")->capture_default_str();
  k->add_option("--sdpa-script", o->sdpa_script, "Baseline script")->capture_default_str();
  k->add_flag("--gemv", o->gemv,
              "Decode GEMV shapes (old kernel, new kernel, cuBLAS) instead of the attention "
              "kernels");
  k->add_flag("--pdl", o->pdl,
              "Launch every kernel with programmatic dependent launch (default: off, each kernel "
              "timed alone)");
  k->add_option("--l2-fetch", o->l2_fetch,
                "L2 fetch granularity in bytes (the device limit) while timing, as the CUDA model "
                "sets it")
      ->capture_default_str()
      ->check(CLI::Range(0, 128));
  k->add_flag("--gemv-sweep", o->gemv_sweep, "With --gemv: every k split x loads per lane too");
  k->add_option("--gemv-rows", o->gemv_rows, "With --gemv: input rows (1-8)")
      ->capture_default_str()
      ->delimiter(',')
      ->check(CLI::Range(1, 8));
  k->add_option("--gemv-matrices", o->gemv_matrices,
                "With --gemv: only these matrices (qkv, o, gate_up, down, lm_head)")
      ->delimiter(',')
      ->check(CLI::IsMember({"qkv", "o", "gate_up", "down", "lm_head"}));
  k->add_option("--gemv-iters", o->gemv_iters, "With --gemv: launches per timing repeat")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  k->add_option("--gemv-rotate-bytes", o->gemv_rotate_bytes,
                "With --gemv: minimum bytes of weight copies per shape")
      ->capture_default_str();
  k->callback([o, &exit_code] { exit_code = RunKernelsBench(*o); });
}

}  // namespace resa
