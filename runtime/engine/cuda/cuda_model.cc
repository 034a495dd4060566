#include "runtime/engine/cuda/cuda_model.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/selection_cuda.h"
#include "runtime/core/status.h"
#include "runtime/engine/cuda/cuda_model_internal.h"
#include "runtime/engine/cuda/model_ops_cuda.h"

namespace resa::cuda {
namespace {

std::atomic<bool> swiglu_epilogue{true};
std::atomic<bool> selection_hints{true};
// On unless RESA_CUDA_FUSED_NORMS=0 at start.
std::atomic<bool> fused_norms{[] {
  const char* v = std::getenv("RESA_CUDA_FUSED_NORMS");
  return v == nullptr || std::string(v) != "0";
}()};

constexpr int32_t kMaxPages = int32_t(1) << 22;
constexpr const char* kProfileGroups[kGroups] = {"start", "matmul", "norm_rope_silu",
                                                 "kv_write", "selection", "attention"};

}  // namespace

int32_t LocalKeys(const SequenceShard& shard, int32_t num_keys) {
  const int32_t full = num_keys / kPageTokens;
  return kPageTokens * shard.NumLocalBlocks(full) +
         (shard.Owns(full) ? num_keys % kPageTokens : 0);
}

CudaModel::~CudaModel() {
  DropGraphs();
  for (cudaEvent_t e : events_) cudaEventDestroy(e);
  if (meta_host_ != nullptr) cudaFreeHost(meta_host_);
  if (tables_host_ != nullptr) cudaFreeHost(tables_host_);
  if (greedy_host_ != nullptr) cudaFreeHost(greedy_host_);
  if (logits_host_ != nullptr) cudaFreeHost(logits_host_);
  if (sample_host_ != nullptr) cudaFreeHost(sample_host_);
  if (stage_host_ != nullptr) cudaFreeHost(stage_host_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::Status CudaModel::Mark(int group) {
  if (!profiling_) return absl::OkStatus();
  if (events_used_ == events_.size()) {
    cudaEvent_t e;
    RESA_RETURN_IF_ERROR(CudaStatus(cudaEventCreate(&e), "cudaEventCreate"));
    events_.push_back(e);
    event_groups_.push_back(0);
  }
  event_groups_[events_used_] = group;
  return CudaStatus(cudaEventRecord(events_[events_used_++], stream_), "cudaEventRecord");
}

// After the stream synchronised: the time between consecutive events goes to the later one's
// group (the kernels enqueued between them).
absl::Status CudaModel::CollectProfile() {
  profile_ms_.resize(kGroups, 0.0);
  for (size_t i = 1; i < events_used_; ++i) {
    float ms = 0.0f;
    RESA_RETURN_IF_ERROR(
        CudaStatus(cudaEventElapsedTime(&ms, events_[i - 1], events_[i]), "cudaEventElapsedTime"));
    profile_ms_[size_t(event_groups_[i])] += ms;
  }
  events_used_ = 0;
  return absl::OkStatus();
}

std::vector<std::pair<std::string, double>> CudaModel::TakeProfile() {
  std::vector<std::pair<std::string, double>> out;
  for (size_t g = 1; g < profile_ms_.size(); ++g) out.push_back({kProfileGroups[g], profile_ms_[g]});
  profile_ms_.assign(kGroups, 0.0);
  return out;
}

int CudaModel::graphs_captured() const {
  int n = 0;
  for (const auto& [key, exec] : graphs_) n += exec != nullptr;
  return n;
}

void CudaModel::DropGraphs() {
  for (auto& [key, exec] : graphs_) {
    if (exec != nullptr) cudaGraphExecDestroy(exec);
  }
  graphs_.clear();
}

absl::StatusOr<std::unique_ptr<CudaModel>> CudaModel::FromCpuWeights(
    const CpuWeights& weights, const CudaModelOptions& options, const CudaModelGroups& groups) {
  RESA_ASSIGN_OR_RETURN(auto w, DeviceWeights::FromCpu(weights, nullptr));
  return Create(std::move(w), options, groups);
}

absl::StatusOr<std::unique_ptr<CudaModel>> CudaModel::Create(std::unique_ptr<DeviceWeights> weights,
                                                             const CudaModelOptions& options,
                                                             const CudaModelGroups& groups) {
  const TpShard& ts = weights->shard();
  const int tp_size = groups.tp != nullptr ? groups.tp->size() : 1;
  const int tp_rank = groups.tp != nullptr ? groups.tp->rank() : 0;
  if (tp_size != ts.size || tp_rank != ts.rank) {
    return absl::InvalidArgumentError(absl::StrCat("weights of TP rank ", ts.rank, " of ", ts.size,
                                                   " used by TP rank ", tp_rank, " of ", tp_size));
  }
  Communicator* sp_host = groups.sp_host != nullptr ? groups.sp_host : groups.sp;
  if (groups.sp != nullptr && groups.sp->size() > 1) {
    if (sp_host == nullptr || sp_host->buffer_location() != BufferLocation::kHost) {
      return absl::InvalidArgumentError(
          "sequence parallelism on the GPU needs the SP group over host buffers (sp_host) for "
          "the selection exchange");
    }
    if (sp_host->size() != groups.sp->size() || sp_host->rank() != groups.sp->rank()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "SP groups disagree: ", groups.sp->Describe(), " vs ", sp_host->Describe()));
    }
  }
  std::unique_ptr<CudaModel> m(new CudaModel());
  m->weights_ = std::move(weights);
  m->options_ = options;
  m->tp_ = groups.tp;
  m->sp_ = groups.sp;
  m->sp_host_ = sp_host;
  const ModelConfig& c = m->weights_->config();
  const KvShard kv_shard{ts.num_kv_heads,
                         SequenceShard{groups.sp != nullptr ? groups.sp->rank() : 0,
                                       groups.sp != nullptr ? groups.sp->size() : 1}};
  RESA_RETURN_IF_ERROR(CudaStatus(cudaStreamCreateWithFlags(&m->stream_, cudaStreamNonBlocking),
                                  "cudaStreamCreate"));
  RESA_ASSIGN_OR_RETURN(m->gemm_, LtGemm::Create(size_t(32) << 20));
  if (options.skinny_gemm) {
    // Not an error where it cannot run (another architecture): those layers stay on cuBLASLt.
    if (auto skinny = SkinnyGemm::Create(); skinny.ok()) m->skinny_ = std::move(*skinny);
  }
  if (options.gemv_max_rows < 0 || options.gemv_max_rows > kGemvMaxRows) {
    return absl::InvalidArgumentError(absl::StrCat("gemv_max_rows must be in [0, ", kGemvMaxRows,
                                                   "], got ", options.gemv_max_rows));
  }
  int32_t pages = options.kv_pages;
  const uint64_t page_bytes = DeviceKvCache::PageBytes(c, ts.num_kv_heads);
  if (pages <= 0) {
    size_t free_b = 0, total_b = 0;
    RESA_RETURN_IF_ERROR(CudaStatus(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo"));
    const uint64_t budget = free_b > options.reserve_bytes ? free_b - options.reserve_bytes : 0;
    pages = int32_t(std::min<uint64_t>(budget / page_bytes, kMaxPages));
    m->sizing_ = absl::StrFormat("from free memory: %.2f of %.2f GiB free after weights, %.2f GiB "
                                 "kept for activations",
                                 free_b / 1073741824.0, total_b / 1073741824.0,
                                 options.reserve_bytes / 1073741824.0);
    if (pages < 1) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "no device memory left for a KV cache (", m->sizing_, ", ", page_bytes, " B per page)"));
    }
  } else {
    m->sizing_ = "as requested";
    // A request the device cannot hold fails here with what does fit, not as a cudaMalloc error
    // of some layer's pool.
    size_t free_b = 0, total_b = 0;
    RESA_RETURN_IF_ERROR(CudaStatus(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo"));
    if (uint64_t(pages) * page_bytes > free_b) {
      const uint64_t budget = free_b > options.reserve_bytes ? free_b - options.reserve_bytes : 0;
      const uint64_t fit = std::min<uint64_t>(budget / page_bytes, kMaxPages) * kPageTokens;
      return absl::ResourceExhaustedError(absl::StrFormat(
          "a KV cache of %lld tokens (%.2f GiB) does not fit on the device: %.2f of %.2f GiB "
          "free after the weights; at most %llu tokens fit beside %.2f GiB kept for activations",
          static_cast<long long>(pages) * kPageTokens, pages * double(page_bytes) / 1073741824.0,
          free_b / 1073741824.0, total_b / 1073741824.0, static_cast<unsigned long long>(fit),
          options.reserve_bytes / 1073741824.0));
    }
  }
  RESA_ASSIGN_OR_RETURN(m->cache_, DeviceKvCache::Create(c, pages, kv_shard));
  return m;
}

std::string CudaModel::Describe() const {
  int device = 0;
  cudaGetDevice(&device);
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, device);
  std::string grid;
  if (tp_parallel() || sp_parallel()) {
    grid = absl::StrFormat(" | tp %d/%d sp %d/%d over %s", tp_parallel() ? tp_->rank() : 0,
                           tp_parallel() ? tp_->size() : 1, sp_parallel() ? sp_->rank() : 0,
                           sp_parallel() ? sp_->size() : 1,
                           std::string((tp_parallel() ? tp_ : sp_)->backend()));
  }
  return absl::StrFormat(
      "CUDA device %d (%s): weights %.2f GiB bf16 | KV cache %d pages = %d tokens (%.2f GiB bf16 "
      "+ summaries, %s)%s",
      device, prop.name, weights_->bytes() / 1073741824.0, cache_->num_pages(),
      cache_->max_tokens(), cache_->bytes() / 1073741824.0, sizing_, grid);
}

absl::Status CudaModel::EnsureCapacity(const Plan& plan) {
  const ModelConfig& c = config();
  bool changed = false;
  const TpShard& ts = weights_->shard();
  const int64_t lh = ts.num_heads, lq = lh * c.head_dim, lkv = int64_t(ts.num_kv_heads) * c.head_dim;
  if (plan.rows > rows_cap_) {
    const int64_t rows = std::max<int64_t>(plan.rows, 64);
    const int64_t hid = c.hidden_size, li = ts.inter_size;
    auto f32 = [](int64_t n) { return size_t((n * 4 + 255) / 256 * 256); };
    auto bf = [](int64_t n) { return size_t((n * 2 + 255) / 256 * 256); };
    const size_t sizes[] = {f32(rows * hid),        f32(rows * (lq + 2 * lkv)),
                            f32(rows * lq),         f32(rows * hid),
                            f32(rows * 2 * li),     bf(rows * hid),
                            bf(rows * lq),          bf(rows * lkv),
                            bf(rows * lkv),         bf(rows * lq),
                            bf(rows * li),          bf(rows * hid),
                            f32(kRowNormMaxSquares)};
    size_t total = 0;
    for (size_t s : sizes) total += s;
    act_mem_ = DeviceAllocation();
    RESA_ASSIGN_OR_RETURN(act_mem_, DeviceAllocation::Create(total, "activations"));
    char* p = act_mem_.as<char>();
    void* ptrs[13];
    for (int i = 0; i < 13; ++i) {
      ptrs[i] = p;
      p += sizes[i];
    }
    h_ = static_cast<float*>(ptrs[0]);
    qkv_ = static_cast<float*>(ptrs[1]);
    attn_ = static_cast<float*>(ptrs[2]);
    proj_ = static_cast<float*>(ptrs[3]);
    gu_ = static_cast<float*>(ptrs[4]);
    x_ = static_cast<__nv_bfloat16*>(ptrs[5]);
    q_ = static_cast<__nv_bfloat16*>(ptrs[6]);
    k_ = static_cast<__nv_bfloat16*>(ptrs[7]);
    v_ = static_cast<__nv_bfloat16*>(ptrs[8]);
    attn_bf_ = static_cast<__nv_bfloat16*>(ptrs[9]);
    act_ = static_cast<__nv_bfloat16*>(ptrs[10]);
    xl_ = static_cast<__nv_bfloat16*>(ptrs[11]);
    squares_ = static_cast<float*>(ptrs[12]);
    rows_cap_ = rows;
    changed = true;
  }
  // Distributed buffers (sized for rows_cap_ rows).
  const bool grid = tp_parallel() || sp_parallel();
  if (grid && size_t(rows_cap_) > grid_rows_) {
    const int64_t rows = rows_cap_;
    auto f32 = [](int64_t n) { return size_t((n * 4 + 255) / 256 * 256); };
    auto bf = [](int64_t n) { return size_t((n * 2 + 255) / 256 * 256); };
    const size_t sizes[] = {f32(rows * (lq + lh)), f32(rows * lh), bf(rows * lkv), bf(rows * lkv),
                            bf(rows * c.q_dim())};
    size_t total = 0;
    for (size_t x : sizes) total += x;
    grid_mem_ = DeviceAllocation();
    RESA_ASSIGN_OR_RETURN(grid_mem_, DeviceAllocation::Create(total, "parallel buffers"));
    char* p = grid_mem_.as<char>();
    part_ = reinterpret_cast<float*>(p);
    merge_lse_ = reinterpret_cast<float*>(p += sizes[0]);
    kw_ = reinterpret_cast<__nv_bfloat16*>(p += sizes[1]);
    vw_ = reinterpret_cast<__nv_bfloat16*>(p += sizes[2]);
    gq_ = reinterpret_cast<__nv_bfloat16*>(p += sizes[3]);
    grid_rows_ = size_t(rows);
    changed = true;
  }
  if (grid) {
    // Gathered partial states (SP), logits rows (TP) or queries (TP, replicated KV heads).
    const int64_t sp_n = sp_parallel() ? int64_t(sp_->size()) : 1;
    const int64_t tp_n = tp_parallel() ? int64_t(tp_->size()) : 1;
    const size_t need = std::max({size_t(sp_n * rows_cap_ * (lq + lh) * 4),
                                  size_t(tp_n * std::max<int64_t>(logits_cap_, plan.nl) *
                                         ts.vocab_chunk * 4),
                                  size_t(tp_n * rows_cap_ * lq * 2)});
    if (need > gath_bytes_) {
      gath_mem_ = DeviceAllocation();
      RESA_ASSIGN_OR_RETURN(gath_mem_, DeviceAllocation::Create(need, "gathered partials"));
      gath_ = gath_mem_.as<void>();
      gath_bytes_ = need;
      changed = true;
    }
    const size_t stage = std::max(2 * gath_bytes_, size_t(rows_cap_) * c.hidden_size * 4);
    const bool host_comm = (tp_parallel() && tp_->buffer_location() == BufferLocation::kHost) ||
                           (sp_parallel() && sp_->buffer_location() == BufferLocation::kHost);
    if (host_comm && stage > stage_cap_) {
      if (stage_host_ != nullptr) cudaFreeHost(stage_host_);
      stage_host_ = nullptr;
      stage_cap_ = 0;
      RESA_RETURN_IF_ERROR(
          CudaStatus(cudaMallocHost(&stage_host_, stage), "cudaMallocHost(collective staging)"));
      stage_cap_ = stage;
    }
  }
  if (plan.scores_size > scores_cap_) {
    const size_t n = std::max<size_t>(plan.scores_size * 3 / 2, 4096);
    scores_mem_ = DeviceAllocation();
    RESA_ASSIGN_OR_RETURN(scores_mem_, DeviceAllocation::Create(n * 4, "local block scores"));
    scores_ = scores_mem_.as<float>();
    scores_cap_ = n;
  }
  if (plan.nl > logits_cap_) {
    const int64_t n = std::max<int64_t>(plan.nl, 8);
    logits_mem_ = DeviceAllocation();
    RESA_ASSIGN_OR_RETURN(logits_mem_,
                          DeviceAllocation::Create(size_t(n) * c.vocab_size * 4, "logits"));
    dlogits_ = logits_mem_.as<float>();
    if (logits_host_ != nullptr) cudaFreeHost(logits_host_);
    logits_host_ = nullptr;
    RESA_RETURN_IF_ERROR(CudaStatus(
        cudaMallocHost(&logits_host_, size_t(n) * c.vocab_size * 4), "cudaMallocHost(logits)"));
    logits_cap_ = 0;
    greedy_mem_ = DeviceAllocation();
    RESA_ASSIGN_OR_RETURN(
        greedy_mem_,
        DeviceAllocation::Create(size_t(n) * (sizeof(SampleRowSpec) + 4), "greedy sampling"));
    if (greedy_host_ != nullptr) cudaFreeHost(greedy_host_);
    greedy_host_ = nullptr;
    RESA_RETURN_IF_ERROR(
        CudaStatus(cudaMallocHost(&greedy_host_, size_t(n) * 4), "cudaMallocHost(greedy ids)"));
    std::vector<SampleRowSpec> specs(static_cast<size_t>(n));
    for (int64_t r = 0; r < n; ++r) specs[size_t(r)].row = int32_t(r);
    RESA_RETURN_IF_ERROR(
        CudaStatus(cudaMemcpy(greedy_mem_.as<void>(), specs.data(),
                              specs.size() * sizeof(SampleRowSpec), cudaMemcpyHostToDevice),
                   "uploading greedy sampling rows"));
    logits_cap_ = n;
    changed = true;
  }
  // int32 buffers staged through pinned memory (step metadata, page tables): room for twice the
  // need, at least 4096 entries.
  auto grow_staged = [&](size_t need, size_t& cap, int32_t*& host, DeviceAllocation& dev,
                         const char* what) -> absl::Status {
    if (need <= cap) return absl::OkStatus();
    const size_t n = std::max<size_t>(need * 2, 4096);
    if (host != nullptr) cudaFreeHost(host);
    host = nullptr;
    cap = 0;
    RESA_RETURN_IF_ERROR(CudaStatus(cudaMallocHost(&host, n * 4),
                                    absl::StrCat("cudaMallocHost(", what, ")").c_str()));
    dev = DeviceAllocation();
    RESA_ASSIGN_OR_RETURN(dev, DeviceAllocation::Create(n * 4, what));
    cap = n;
    changed = true;
    return absl::OkStatus();
  };
  RESA_RETURN_IF_ERROR(
      grow_staged(plan.meta.size(), meta_cap_, meta_host_, meta_dev_, "step metadata"));
  const size_t tables_cap = tables_cap_;
  RESA_RETURN_IF_ERROR(grow_staged(plan.order.size() * size_t(plan.stride), tables_cap_,
                                   tables_host_, tables_dev_, "page tables"));
  if (tables_cap_ != tables_cap) tables_filled_.clear();  // a new buffer: no row is known
  if (plan.blocks_size > blocks_cap_) {
    const size_t n = std::max<size_t>(plan.blocks_size * 2, 4096);
    blocks_mem_ = DeviceAllocation();
    RESA_ASSIGN_OR_RETURN(blocks_mem_, DeviceAllocation::Create(n * 4, "selected blocks"));
    blocks_cap_ = n;
    changed = true;
  }
  if (SelectionHints() && !plan.sharded && plan.ns > 0 && plan.rows > hint_rows_) {
    // One hint per (layer, row, local KV head), zeroed: a hint of 0 makes every block scoring
    // >= 0 a candidate, usually too many, so a row's first step runs the whole tail and leaves
    // a real hint.
    const int64_t n = std::max<int64_t>(rows_cap_, plan.rows);
    const size_t bytes = size_t(c.num_layers) * size_t(n) * ts.num_kv_heads * 4;
    hints_mem_ = DeviceAllocation();
    RESA_ASSIGN_OR_RETURN(hints_mem_, DeviceAllocation::Create(bytes, "selection hints"));
    RESA_RETURN_IF_ERROR(
        CudaStatus(cudaMemset(hints_mem_.as<void>(), 0, bytes), "zeroing selection hints"));
    hint_rows_ = n;
    changed = true;
  }
  if (plan.reduce_last && size_t(plan.keep) * c.hidden_size * 4 > last_h_mem_.bytes()) {
    last_h_mem_ = DeviceAllocation();
    RESA_ASSIGN_OR_RETURN(
        last_h_mem_,
        DeviceAllocation::Create(std::max<size_t>(size_t(plan.keep) * c.hidden_size * 4, 1 << 16),
                                 "last-layer residual rows"));
  }
  if (plan.workspace_bytes > workspace_.bytes()) {
    const size_t n = std::max<size_t>(plan.workspace_bytes + (size_t(1) << 20),
                                      workspace_.bytes() * 3 / 2);
    workspace_ = DeviceAllocation();
    RESA_ASSIGN_OR_RETURN(workspace_, DeviceAllocation::Create(n, "attention workspace"));
    // The arrival counters at the front must start at zero (attention_cuda.h).
    RESA_RETURN_IF_ERROR(CudaStatus(cudaMemset(workspace_.as<void>(), 0, n), "zeroing workspace"));
    changed = true;
  }
  if (changed) DropGraphs();
  return absl::OkStatus();
}

absl::Status CudaModel::TraceSelection(const Plan& plan, int group, int layer) {
  const Plan::Group& g = plan.groups[size_t(group)];
  const int hkv = cache_->layer(0).num_kv_heads;  // this rank's
  std::vector<int32_t> blocks(size_t(g.count) * hkv * g.bstride), counts(size_t(g.count));
  const int32_t* base = blocks_mem_.as<int32_t>();
  RESA_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(blocks.data(), base + g.blocks_at,
                                                  blocks.size() * 4, cudaMemcpyDeviceToHost,
                                                  stream_),
                                  "downloading a selection"));
  RESA_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(counts.data(), base + g.num_blocks_at,
                                                  counts.size() * 4, cudaMemcpyDeviceToHost,
                                                  stream_),
                                  "downloading a selection"));
  RESA_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream_), "tracing a selection"));
  for (int b = 0; b < g.count; ++b) {
    for (int h = 0; h < hkv; ++h) {
      const int32_t* sel = blocks.data() + (size_t(b) * hkv + h) * g.bstride;
      trace_(layer, weights_->shard().kv_head_begin + h, plan.caller_row[size_t(g.first + b)],
             std::span<const int32_t>(sel, size_t(counts[size_t(b)])));
    }
  }
  return absl::OkStatus();
}

absl::Status CudaModel::Linear(const __nv_bfloat16* x, const __nv_bfloat16* w, int rows, int n,
                               int k, float* y) {
  if (rows <= options_.gemv_max_rows && k % 8 == 0) {
    return GemvBf16Cuda(w, x, rows, n, k, y, stream_);
  }
  if (UseSkinny(x, w, rows, n, k, false)) {
    SkinnyGemmParams p;
    p.x = x, p.w = w, p.rows = rows, p.n = n, p.k = k, p.y = y;
    return skinny_->Run(p, stream_);
  }
  return gemm_->Linear(x, w, rows, n, k, y, stream_);
}

bool CudaModel::UseSkinny(const __nv_bfloat16* x, const __nv_bfloat16* w, int rows, int n, int k,
                          bool swiglu) const {
  return skinny_ != nullptr && SkinnyGemm::Supported(rows, n, k, swiglu) &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

absl::Status CudaModel::Enqueue(const Plan& plan) {
  const ModelConfig& c = config();
  const TpShard& ts = weights_->shard();
  const int hid = c.hidden_size, lq = ts.num_heads * c.head_dim,
            lkv = ts.num_kv_heads * c.head_dim, li = ts.inter_size;
  const int rows = int(plan.rows);
  const int32_t* meta = meta_dev_.as<int32_t>();
  RESA_RETURN_IF_ERROR(Mark(kStart));
  // The embedding rows and the first layer's input norm, one launch (the bits of the two).
  RESA_RETURN_IF_ERROR(EmbedRmsNormCuda(weights_->embed(), meta + plan.o_tokens, rows, hid,
                                        weights_->layer(0).input_norm, c.rms_norm_eps, h_, x_,
                                        stream_));
  RESA_RETURN_IF_ERROR(Mark(kElementwise));
  // With no logits asked for (a rectification pass, a non-final prefill chunk), nothing reads the
  // last layer's output: its K/V depend only on its input, so it stops once they are written
  // (CpuModel::Forward does the same). Sparse rows, which write theirs in the selection, keep it.
  const bool kv_only_last = plan.nl == 0 && plan.ns == 0;
  // A step whose linear layers all run the GEMVs (rows <= gemv_max_rows) runs its RMSNorms
  // inside them (FusedNorms(), RowNorm): o_proj and down add their sums into h and write the next
  // norm's numerator g into x_ and their block sums of h^2 into squares_, which qkv and gate_up
  // read and scale by 1 / rms. Two launches less a layer. Not with TP (the projections'
  // all-reduce comes before the residual add) or SP. Whether the forward asks for logits does
  // not change it, so that a chunk gives the same K/V either way (a Plan::reduce_last forward
  // runs its last layer's o_proj and gate_up fused on the kept rows).
  const bool gemv_step = rows <= options_.gemv_max_rows && FusedNorms() && SwiGluEpilogue() &&
                         !plan.sharded && !tp_parallel() && hid % 8 == 0 && lq % 8 == 0 &&
                         li % 8 == 0;
  const int o_squares = gemv_step ? GemvResidualSquares(rows, hid, lq) : 0,
            down_squares = gemv_step ? GemvResidualSquares(rows, hid, li) : 0;
  const bool fuse_norms =
      gemv_step && int64_t(rows) * std::max(o_squares, down_squares) <= kRowNormMaxSquares;
  const RowNorm after_o{squares_, o_squares, hid, c.rms_norm_eps},
      after_down{squares_, down_squares, hid, c.rms_norm_eps};
  for (int l = 0; l < c.num_layers; ++l) {
    const bool kv_only = kv_only_last && l == c.num_layers - 1;
    const DeviceLayerWeights& w = weights_->layer(l);
    // Layer l > 0 of a fused step finds g of its input norm in x_ (the down GEMV before); layer
    // 0's x_ is EmbedRmsNormCuda's.
    const bool norm_in_qkv = fuse_norms && l > 0;
    if (!norm_in_qkv && l > 0) {
      RESA_RETURN_IF_ERROR(
          AddRmsNormCuda(h_, proj_, w.input_norm, rows, hid, c.rms_norm_eps, x_, stream_));
      RESA_RETURN_IF_ERROR(Mark(kElementwise));
    }
    QkvRopeParams qp;
    qp.qkv = qkv_;
    qp.bias = w.qkv_bias;
    qp.positions = meta + plan.o_pos;
    qp.rows = rows;
    qp.num_heads = ts.num_heads;
    qp.num_kv_heads = ts.num_kv_heads;
    qp.head_dim = c.head_dim;
    qp.theta = c.rope_theta;
    qp.q = q_;
    qp.k = k_;
    qp.v = v_;
    const bool qkv_epilogue = rows <= options_.gemv_max_rows && hid % 8 == 0 && SwiGluEpilogue();
    // Dense decode rows only: the QKV GEMV's epilogue also appends their K/V to the cache.
    const bool append_in_gemv = qkv_epilogue && plan.nd == rows && !plan.sharded;
    if (append_in_gemv) {
      qp.kv = cache_->layer(l);
      qp.page_table = Tables(plan, size_t(plan.ns));  // ns == 0
      qp.page_table_stride = plan.stride;
      qp.num_keys = meta + plan.o_wk_keys + plan.ns;
    }
    if (qkv_epilogue) {
      // Bias and RoPE in the QKV GEMV's epilogue: the same bits, one launch less per layer (and
      // the two of WriteKvCuda with append_in_gemv).
      RESA_RETURN_IF_ERROR(GemvQkvRopeBf16Cuda(w.qkv, x_, hid, qp, stream_, GemvOptions{},
                                               norm_in_qkv ? after_down : RowNorm{}));
      RESA_RETURN_IF_ERROR(Mark(kMatmul));
    } else {
      RESA_RETURN_IF_ERROR(Linear(x_, w.qkv, rows, lq + 2 * lkv, hid, qkv_));
      RESA_RETURN_IF_ERROR(Mark(kMatmul));
      RESA_RETURN_IF_ERROR(QkvRopeCuda(qp, stream_));
      RESA_RETURN_IF_ERROR(Mark(kElementwise));
    }
    if (ts.kv_replicas > 1 && plan.ns > 0) RESA_RETURN_IF_ERROR(GatherGroupQueries(plan));
    if (kv_only && plan.sharded) {
      RESA_RETURN_IF_ERROR(WriteOwnedKv(plan, l));
    } else if (plan.sharded) {
      RESA_RETURN_IF_ERROR(ShardedAttention(plan, l));
    } else if (plan.nd + plan.nc > 0 && !append_in_gemv) {
      // K/V of every row but the sparse ones (SelectBlocksCuda writes theirs).
      WriteKvParams wk;
      wk.kv = cache_->layer(l);
      wk.k = k_;
      wk.v = v_;
      wk.num_seqs = plan.nd + plan.nc;
      wk.token_offsets = meta + plan.o_wk_off + plan.ns;  // absolute rows of k_ / v_
      wk.first_pos = meta + plan.o_wk_first + plan.ns;
      wk.num_keys = meta + plan.o_wk_keys + plan.ns;
      wk.page_tables = Tables(plan, size_t(plan.ns));
      wk.page_table_stride = plan.stride;
      wk.max_tokens = plan.max_write_tokens;
      RESA_RETURN_IF_ERROR(WriteKvCuda(wk, stream_));
      RESA_RETURN_IF_ERROR(Mark(kKvWrite));
    }
    if (kv_only) break;
    // From here on the layer runs on `n` rows of residual `h`: all of them, or in the last layer
    // of a Plan::reduce_last forward the kept ones, gathered (queries into attn_bf_, residual
    // rows into last_h_; fp32 rows copied as pairs of 16-bit units).
    const bool reduce = plan.reduce_last && l == c.num_layers - 1;
    const int n = reduce ? plan.keep : rows;
    float* h = reduce ? last_h_mem_.as<float>() : h_;
    if (reduce) {
      RESA_RETURN_IF_ERROR(GatherRowsCuda(q_, meta + plan.o_keep, n, lq, attn_bf_, stream_));
      RESA_RETURN_IF_ERROR(GatherRowsCuda(reinterpret_cast<const __nv_bfloat16*>(h_),
                                          meta + plan.o_keep, n, 2 * hid,
                                          reinterpret_cast<__nv_bfloat16*>(h), stream_));
      RESA_RETURN_IF_ERROR(Mark(kElementwise));
    }
    if (!plan.sharded) {
      Launches L = BuildLaunches(plan, l);
      L.dense.q_from_previous_kernel = append_in_gemv;
      // The only K/V of the dense decode rows written in this forward is each row's new token
      // (this layer's QKV epilogue or WriteKvCuda; chunk rows are other sequences). Not for
      // dense_last (copied from dense before this, so it keeps false): its chunks' last rows read
      // the pages WriteKvCuda filled for the whole chunk.
      L.dense.pages_before_wait = true;
      if (reduce) {
        RESA_RETURN_IF_ERROR(DecodeAttentionCuda(L.dense_last, stream_));
      } else if (plan.nd > 0) {
        RESA_RETURN_IF_ERROR(DecodeAttentionCuda(L.dense, stream_));
      }
      RESA_RETURN_IF_ERROR(Mark(kAttention));
      for (size_t g = 0; g < L.select.size(); ++g) {
        RESA_RETURN_IF_ERROR(SelectBlocksCuda(L.select[g], stream_));
        RESA_RETURN_IF_ERROR(Mark(kSelect));
        if (trace_) RESA_RETURN_IF_ERROR(TraceSelection(plan, int(g), l));
        RESA_RETURN_IF_ERROR(DecodeAttentionCuda(L.sparse[g], stream_));
        RESA_RETURN_IF_ERROR(Mark(kAttention));
      }
      if (plan.nc > 0 && !reduce) RESA_RETURN_IF_ERROR(ChunkAttentionCuda(L.chunk, stream_));
      RESA_RETURN_IF_ERROR(Mark(kAttention));
    }
    // The kept rows of a reduced last layer may plan their GEMVs otherwise (one row: the
    // CUDA-core kernel), so their block sums are counted for n rows.
    const RowNorm after_o_n =
        reduce && fuse_norms
            ? RowNorm{squares_, GemvResidualSquares(n, hid, lq), hid, c.rms_norm_eps}
            : after_o;
    if (fuse_norms) {
      // h += o_proj, x_ = the post-attention norm's numerator (gate_up scales by 1 / rms).
      RESA_RETURN_IF_ERROR(
          GemvResidualBf16Cuda(w.o, attn_, n, hid, lq, h, w.post_norm, x_, squares_, stream_));
    } else if (n <= options_.gemv_max_rows && lq % 8 == 0) {
      // The GEMV converts the fp32 attention output itself (one launch less per layer).
      RESA_RETURN_IF_ERROR(GemvBf16Cuda(w.o, attn_, n, hid, lq, proj_, stream_));
    } else {
      RESA_RETURN_IF_ERROR(ToBf16Cuda(attn_, int64_t(n) * lq, attn_bf_, stream_));
      RESA_RETURN_IF_ERROR(Linear(attn_bf_, w.o, n, hid, lq, proj_));
    }
    RESA_RETURN_IF_ERROR(Mark(kMatmul));
    // Row-parallel projections: each TP rank holds a partial sum of the output.
    if (tp_parallel()) RESA_RETURN_IF_ERROR(AllReduceSum(*tp_, proj_, size_t(n) * hid));
    if (!fuse_norms) {
      RESA_RETURN_IF_ERROR(
          AddRmsNormCuda(h, proj_, w.post_norm, n, hid, c.rms_norm_eps, x_, stream_));
      RESA_RETURN_IF_ERROR(Mark(kElementwise));
    }
    if (n <= options_.gemv_max_rows && hid % 8 == 0 && SwiGluEpilogue()) {
      // SwiGLU in the gate_up GEMV's epilogue: the same bits, one launch less per layer.
      RESA_RETURN_IF_ERROR(GemvSwiGluBf16Cuda(w.gate_up, x_, n, li, hid, act_, stream_,
                                              GemvOptions{}, fuse_norms ? after_o_n : RowNorm{}));
      RESA_RETURN_IF_ERROR(Mark(kMatmul));
    } else if (n > options_.gemv_max_rows && UseSkinny(x_, w.gate_up, n, 2 * li, hid, true)) {
      // Short chunks: the SwiGLU product from the GEMM's fp32 accumulators, no gate / up buffer.
      SkinnyGemmParams p;
      p.x = x_, p.w = w.gate_up, p.rows = n, p.n = 2 * li, p.k = hid, p.act = act_;
      RESA_RETURN_IF_ERROR(skinny_->Run(p, stream_));
      RESA_RETURN_IF_ERROR(Mark(kMatmul));
    } else if (n > options_.gemv_max_rows) {
      // Chunks: the GEMM rounds gate and up to bf16 (as the bf16 reference models do), half the
      // bytes of fp32 written and read back by SiluMul.
      __nv_bfloat16* gu = reinterpret_cast<__nv_bfloat16*>(gu_);
      RESA_RETURN_IF_ERROR(gemm_->Linear(x_, w.gate_up, n, 2 * li, hid, gu, stream_));
      RESA_RETURN_IF_ERROR(Mark(kMatmul));
      RESA_RETURN_IF_ERROR(SiluMulCuda(gu, n, li, act_, stream_));
      RESA_RETURN_IF_ERROR(Mark(kElementwise));
    } else {
      RESA_RETURN_IF_ERROR(Linear(x_, w.gate_up, n, 2 * li, hid, gu_));
      RESA_RETURN_IF_ERROR(Mark(kMatmul));
      RESA_RETURN_IF_ERROR(SiluMulCuda(gu_, n, li, act_, stream_));
      RESA_RETURN_IF_ERROR(Mark(kElementwise));
    }
    if (fuse_norms && l + 1 < c.num_layers) {
      // h += down, x_ = the next layer's input norm numerator (its qkv scales by 1 / rms).
      RESA_RETURN_IF_ERROR(GemvResidualBf16Cuda(w.down, act_, n, hid, li, h_,
                                                weights_->layer(l + 1).input_norm, x_, squares_,
                                                stream_));
    } else {
      RESA_RETURN_IF_ERROR(Linear(act_, w.down, n, hid, li, proj_));
    }
    RESA_RETURN_IF_ERROR(Mark(kMatmul));
    if (tp_parallel()) RESA_RETURN_IF_ERROR(AllReduceSum(*tp_, proj_, size_t(n) * hid));
  }
  if (plan.nl == 0) return absl::OkStatus();
  // The residual of the last layer's rows: all of them, or the kept ones (Plan::reduce_last).
  float* h_last = plan.reduce_last ? last_h_mem_.as<float>() : h_;
  const int last_rows = plan.reduce_last ? plan.keep : rows;
  RESA_RETURN_IF_ERROR(AddRmsNormCuda(h_last, proj_, weights_->final_norm(), last_rows, hid,
                                      c.rms_norm_eps, x_, stream_));
  // The logits rows: every row in order (decode steps) reads x_ as it is; else gathered.
  const __nv_bfloat16* xl = x_;
  if (!plan.logits_all_rows) {
    RESA_RETURN_IF_ERROR(GatherRowsCuda(
        x_, meta + (plan.reduce_last ? plan.o_logit_last : plan.o_logit), plan.nl, hid, xl_,
        stream_));
    xl = xl_;
  }
  RESA_RETURN_IF_ERROR(Mark(kElementwise));
  if (tp_parallel()) {
    RESA_RETURN_IF_ERROR(GatherLogits(plan, xl));
  } else {
    if (plan.greedy_key) {
      RESA_RETURN_IF_ERROR(GemvArgMaxBf16Cuda(weights_->lm_head(), xl, c.vocab_size, hid, dlogits_,
                                              ArgMaxSlot(plan), stream_));
    } else {
      RESA_RETURN_IF_ERROR(Linear(xl, weights_->lm_head(), plan.nl, c.vocab_size, hid, dlogits_));
    }
    RESA_RETURN_IF_ERROR(Mark(kMatmul));
  }
  return plan.greedy ? GreedyIds(plan) : absl::OkStatus();
}

uint64_t* CudaModel::ArgMaxSlot(const Plan& plan) const {
  return reinterpret_cast<uint64_t*>(meta_dev_.as<int32_t>() + plan.o_argmax);
}

absl::Status CudaModel::GreedyIds(const Plan& plan) {
  if (plan.greedy_key) {  // the lm_head GEMV's key; Forward reads the id from it
    return CudaStatus(cudaMemcpyAsync(greedy_host_, ArgMaxSlot(plan), sizeof(uint64_t),
                                      cudaMemcpyDeviceToHost, stream_),
                      "downloading the greedy key");
  }
  SampleRowsParams sp;
  sp.logits = dlogits_;
  sp.vocab = config().vocab_size;
  sp.specs = greedy_mem_.as<SampleRowSpec>();
  sp.num_rows = plan.nl;
  sp.tokens = reinterpret_cast<int32_t*>(greedy_mem_.as<char>() +
                                         size_t(logits_cap_) * sizeof(SampleRowSpec));
  RESA_RETURN_IF_ERROR(SampleRowsCuda(sp, stream_));
  return CudaStatus(cudaMemcpyAsync(greedy_host_, sp.tokens, size_t(plan.nl) * 4,
                                    cudaMemcpyDeviceToHost, stream_),
                    "downloading greedy ids");
}

const int32_t* CudaModel::Tables(const Plan& plan, size_t row) const {
  return tables_dev_.as<int32_t>() + row * size_t(plan.stride);
}

// The host writes a mirror row only after the copies of the forward before have run: every
// Forward synchronises its stream before it returns.
absl::Status CudaModel::UploadTables(std::span<const ForwardChunk> chunks, const Plan& plan) {
  const size_t stride = size_t(plan.stride), rows = plan.order.size();
  if (stride != tables_stride_) {  // a new layout: no device row is known
    tables_stride_ = stride;
    tables_filled_.assign(tables_filled_.size(), kTableRowUnknown);
  }
  if (tables_filled_.size() < rows) tables_filled_.resize(rows, kTableRowUnknown);
  int32_t* dev = tables_dev_.as<int32_t>();
  for (size_t p = 0; p < rows; ++p) {
    const std::vector<int32_t>& t = chunks[size_t(plan.order[p])].seq->page_table;
    const size_t n = t.size();  // <= stride (Prepare)
    int32_t* m = tables_host_ + p * stride;
    size_t& filled = tables_filled_[p];
    size_t lo = 0, hi = stride;
    if (filled != kTableRowUnknown) {
      // Usually the same table, or the same with pages appended: compare the common prefix
      // (memcmp) and find where it first differs only when it does.
      const size_t common = std::min(filled, n);
      lo = common;
      if (std::memcmp(m, t.data(), common * 4) != 0) {
        lo = size_t(std::mismatch(m, m + common, t.data()).first - m);
      }
      hi = std::max(filled, n);
    }
    if (lo >= hi) continue;
    if (lo < n) std::memcpy(m + lo, t.data() + lo, (n - lo) * 4);
    if (hi > std::max(lo, n)) std::fill(m + std::max(lo, n), m + hi, 0);
    filled = kTableRowUnknown;  // until the copy is enqueued
    RESA_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(dev + p * stride + lo, m + lo, (hi - lo) * 4,
                                                    cudaMemcpyHostToDevice, stream_),
                                    "uploading page tables"));
    filled = n;
  }
  return absl::OkStatus();
}

absl::Status CudaModel::Forward(std::span<const ForwardChunk> chunks, float* logits) {
  Plan plan;
  RESA_RETURN_IF_ERROR(Prepare(chunks, plan));
  auto undo = [&](absl::Status st) {
    for (size_t i = 0; i < plan.reserved_before.size(); ++i) {
      cache_->ShrinkPages(*chunks[i].seq, plan.reserved_before[i]);
    }
    return st;
  };
  if (plan.rows == 0) return absl::OkStatus();
  // The device's L2 fetch granularity (cuda_status.h), before the step's first kernel.
  if (absl::Status st = ApplyL2FetchGranularity(); !st.ok()) return undo(st);
  if (plan.nl > 0) logits_rows_ = greedy_rows_ = 0;  // dlogits_ is rewritten (or lost on error)
  plan.workspace_bytes = BuildLaunches(plan, 0).WorkspaceBytes(plan);
  if (absl::Status st = EnsureCapacity(plan); !st.ok()) return undo(st);
  if (absl::Status st = UploadTables(chunks, plan); !st.ok()) return undo(st);
  std::memcpy(meta_host_, plan.meta.data(), plan.meta.size() * 4);
  absl::Status st = CudaStatus(cudaMemcpyAsync(meta_dev_.as<void>(), meta_host_,
                                               plan.meta.size() * 4, cudaMemcpyHostToDevice,
                                               stream_),
                               "uploading step metadata");
  if (!st.ok()) return undo(st);
  if (plan.graph && graph_capture_) {
    auto it = graphs_.find(plan.key);
    if (it == graphs_.end()) {
      // First sight of this shape: run eagerly (one-time kernel setup happens outside any
      // capture) and remember the key; capture on the second sight.
      graphs_[plan.key] = nullptr;
      st = Enqueue(plan);
    } else if (it->second == nullptr) {
      cudaGraph_t graph = nullptr;
      st = CudaStatus(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal),
                      "cudaStreamBeginCapture");
      if (st.ok()) {
        absl::Status enq = Enqueue(plan);
        st = CudaStatus(cudaStreamEndCapture(stream_, &graph), "cudaStreamEndCapture");
        if (!enq.ok()) st = enq;
      }
      cudaGraphExec_t exec = nullptr;
      if (st.ok()) {
        st = CudaStatus(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
      }
      if (graph != nullptr) cudaGraphDestroy(graph);
      if (st.ok()) {
        it->second = exec;
        st = CudaStatus(cudaGraphLaunch(exec, stream_), "cudaGraphLaunch");
      }
    } else {
      st = CudaStatus(cudaGraphLaunch(it->second, stream_), "cudaGraphLaunch");
      if (st.ok() && plan.nc > 0) ++chunk_graph_replays_;
    }
  } else {
    st = Enqueue(plan);
  }
  if (st.ok()) st = SyncCommunicators();
  const int vocab = config().vocab_size;
  if (st.ok() && logits != nullptr && plan.nl > 0) {
    st = CudaStatus(cudaMemcpyAsync(logits_host_, dlogits_, size_t(plan.nl) * vocab * 4,
                                    cudaMemcpyDeviceToHost, stream_),
                    "downloading logits");
  }
  const absl::Status sync = CudaStatus(cudaStreamSynchronize(stream_), "forward step");
  if (st.ok()) st = sync;
  if (st.ok() && profiling_) st = CollectProfile();
  events_used_ = 0;
  if (!st.ok()) return undo(st);
  if (logits != nullptr && plan.nl > 0) {
    std::memcpy(logits, logits_host_, size_t(plan.nl) * vocab * 4);
  }
  if (plan.greedy_key) {
    uint64_t key;
    std::memcpy(&key, greedy_host_, sizeof(key));
    greedy_host_[0] = ArgMaxKeyId(key);
  }
  if (plan.nl > 0) {
    logits_rows_ = plan.nl;
    greedy_rows_ = plan.greedy ? plan.nl : 0;
  }
  for (size_t i = 0; i < chunks.size(); ++i) {
    chunks[i].seq->length =
        std::max(chunks[i].seq->length, plan.starts[i] + int32_t(chunks[i].tokens.size()));
  }
  return absl::OkStatus();
}

absl::Status CudaModel::Sample(std::span<const RowSampling> rows, int32_t* tokens) {
  if (rows.empty()) return absl::OkStatus();
  const int vocab = config().vocab_size;
  if (rows.size() > 65535) return absl::InvalidArgumentError("Sample: more than 65535 rows");
  bool greedy = true;
  for (const RowSampling& r : rows) {
    if (r.row < 0 || r.row >= logits_rows_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Sample: logits row ", r.row, " out of range; the last forward produced ", logits_rows_));
    }
    RESA_RETURN_IF_ERROR(r.params.Validate());
    if (!(r.u >= 0.0 && r.u < 1.0)) {
      return absl::InvalidArgumentError(absl::StrCat("Sample: u must be in [0, 1), got ", r.u));
    }
    greedy &= r.params.temperature == 0.0f || r.params.top_k == 1;
  }
  greedy_hint_ = greedy;
  if (greedy && greedy_rows_ > 0 && greedy_rows_ == logits_rows_) {  // Plan::greedy's ids
    for (size_t i = 0; i < rows.size(); ++i) tokens[i] = greedy_host_[rows[i].row];
    ++greedy_from_forward_;
    return absl::OkStatus();
  }
  const size_t n = rows.size();
  const size_t spec_bytes = n * sizeof(SampleRowSpec);
  if (n > sample_cap_) {
    const size_t cap = std::max<size_t>(n, 64);
    const size_t bytes = cap * (sizeof(SampleRowSpec) + sizeof(int32_t));
    if (sample_host_ != nullptr) cudaFreeHost(sample_host_);
    sample_host_ = nullptr;
    sample_cap_ = 0;
    RESA_RETURN_IF_ERROR(
        CudaStatus(cudaMallocHost(&sample_host_, bytes), "cudaMallocHost(sampling)"));
    sample_dev_ = DeviceAllocation();
    RESA_ASSIGN_OR_RETURN(sample_dev_, DeviceAllocation::Create(bytes, "sampling rows"));
    sample_cap_ = cap;
  }
  if (!greedy && int64_t(n) > weights_rows_) {
    const int64_t cap = std::max<int64_t>(int64_t(n), 8);
    sample_weights_ = DeviceAllocation();
    weights_rows_ = 0;
    RESA_ASSIGN_OR_RETURN(sample_weights_, DeviceAllocation::Create(size_t(cap) * vocab * 4,
                                                                   "sampling weights"));
    weights_rows_ = cap;
  }
  auto* specs = reinterpret_cast<SampleRowSpec*>(sample_host_);
  for (size_t i = 0; i < n; ++i) {
    const SamplingParams& p = rows[i].params;
    specs[i] = SampleRowSpec{rows[i].row, p.temperature, p.top_k, p.top_p, rows[i].u};
  }
  // Specs, then the ids (int32) after the cap's specs.
  char* dev = sample_dev_.as<char>();
  const size_t ids_at = sample_cap_ * sizeof(SampleRowSpec);
  SampleRowsParams sp;
  sp.logits = dlogits_;
  sp.vocab = vocab;
  sp.specs = reinterpret_cast<const SampleRowSpec*>(dev);
  sp.num_rows = int(n);
  sp.weights = greedy ? nullptr : sample_weights_.as<float>();
  sp.tokens = reinterpret_cast<int32_t*>(dev + ids_at);
  absl::Status st = CudaStatus(
      cudaMemcpyAsync(dev, sample_host_, spec_bytes, cudaMemcpyHostToDevice, stream_),
      "uploading sampling rows");
  if (st.ok()) st = SampleRowsCuda(sp, stream_);
  if (st.ok()) {
    st = CudaStatus(cudaMemcpyAsync(sample_host_ + ids_at, sp.tokens, n * 4,
                                    cudaMemcpyDeviceToHost, stream_),
                    "downloading sampled ids");
  }
  const absl::Status sync = CudaStatus(cudaStreamSynchronize(stream_), "sampling");
  if (st.ok()) st = sync;
  RESA_RETURN_IF_ERROR(st);
  std::memcpy(tokens, sample_host_ + ids_at, n * 4);
  return absl::OkStatus();
}

absl::Status CudaModel::CopySequence(const SequenceKv& from, SequenceKv& to) {
  RESA_RETURN_IF_ERROR(cache_->Reserve(to, from.length));
  const int n = int(to.page_table.size());
  if (n == 0) return absl::OkStatus();
  auto undo = [&](absl::Status st) {
    cache_->Release(to);
    return st;
  };
  RESA_ASSIGN_OR_RETURN(DeviceAllocation ids, DeviceAllocation::Create(size_t(2) * n * 4, "page ids"));
  std::vector<int32_t> host(from.page_table.begin(), from.page_table.begin() + n);
  host.insert(host.end(), to.page_table.begin(), to.page_table.end());
  absl::Status st = CudaStatus(
      cudaMemcpyAsync(ids.as<void>(), host.data(), host.size() * 4, cudaMemcpyHostToDevice, stream_),
      "uploading page ids");
  for (int l = 0; st.ok() && l < config().num_layers; ++l) {
    st = CopyPagesCuda(cache_->layer(l), ids.as<int32_t>(), ids.as<int32_t>() + n, n, stream_);
  }
  const absl::Status sync = CudaStatus(cudaStreamSynchronize(stream_), "copying a sequence");
  if (st.ok()) st = sync;
  if (!st.ok()) return undo(st);
  to.length = from.length;
  return absl::OkStatus();
}

absl::Status CudaModel::AdoptSyntheticContext(SequenceKv& seq, int32_t length) {
  if (seq.length != 0 || !seq.page_table.empty()) {
    return absl::InvalidArgumentError("AdoptSyntheticContext takes an empty sequence");
  }
  if (length <= 0) return absl::InvalidArgumentError("AdoptSyntheticContext: length <= 0");
  if (!pool_filled_) {
    const ModelConfig& c = config();
    const uint64_t seed = 0x5eed;
    for (int l = 0; l < c.num_layers; ++l) {
      const PagedKvCuda kv = cache_->layer(l);
      const int64_t n = int64_t(cache_->num_pages()) * int64_t(kv.page_elems());
      RESA_RETURN_IF_ERROR(FillUniformBf16Cuda(kv.k, n, seed + 2 * l, 1.0f, 0.0f, stream_));
      RESA_RETURN_IF_ERROR(FillUniformBf16Cuda(kv.v, n, seed + 2 * l + 1, 1.0f, 0.0f, stream_));
      RESA_RETURN_IF_ERROR(SummarizePagesCuda(kv.k, cache_->num_pages(), kv.num_kv_heads,
                                              kv.head_dim, kv.summary, stream_));
    }
    RESA_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream_), "filling the KV pool"));
    pool_filled_ = true;
  }
  RESA_RETURN_IF_ERROR(cache_->Reserve(seq, length));
  seq.length = length;
  return absl::OkStatus();
}

absl::StatusOr<double> MeasureGemmTflops(int n) {
  if (n < 256 || n > 16384 || n % 8 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("MeasureGemmTflops: n must be a multiple of 8 in [256, 16384], got ", n));
  }
  const size_t elems = size_t(n) * size_t(n);
  RESA_ASSIGN_OR_RETURN(DeviceAllocation a, DeviceAllocation::Create(elems * 2, "GEMM benchmark"));
  RESA_ASSIGN_OR_RETURN(DeviceAllocation b, DeviceAllocation::Create(elems * 2, "GEMM benchmark"));
  RESA_ASSIGN_OR_RETURN(DeviceAllocation c, DeviceAllocation::Create(elems * 4, "GEMM benchmark"));
  RESA_RETURN_IF_ERROR(
      FillUniformBf16Cuda(a.as<__nv_bfloat16>(), int64_t(elems), 1, 1.0f, 0.0f, nullptr));
  RESA_RETURN_IF_ERROR(
      FillUniformBf16Cuda(b.as<__nv_bfloat16>(), int64_t(elems), 2, 1.0f, 0.0f, nullptr));
  RESA_ASSIGN_OR_RETURN(std::unique_ptr<LtGemm> gemm, LtGemm::Create(size_t(32) << 20));
  cudaEvent_t start = nullptr, stop = nullptr;
  absl::Status st = CudaStatus(cudaEventCreate(&start), "cudaEventCreate");
  if (st.ok()) st = CudaStatus(cudaEventCreate(&stop), "cudaEventCreate");
  float best_ms = 1e30f;
  for (int i = 0; i < 12 && st.ok(); ++i) {
    cudaEventRecord(start);
    // CudaModel::Linear's call for rows > gemv_max_rows.
    st =
        gemm->Linear(b.as<__nv_bfloat16>(), a.as<__nv_bfloat16>(), n, n, n, c.as<float>(), nullptr);
    cudaEventRecord(stop);
    if (st.ok()) st = CudaStatus(cudaEventSynchronize(stop), "GEMM benchmark");
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, start, stop);
    if (i >= 2) best_ms = std::min(best_ms, ms);
  }
  if (start != nullptr) cudaEventDestroy(start);
  if (stop != nullptr) cudaEventDestroy(stop);
  RESA_RETURN_IF_ERROR(st);
  return 2.0 * double(n) * n * n / (best_ms * 1e-3) / 1e12;
}

bool SkinnyGemmDefault() {
  static const bool on = [] {
    const char* v = std::getenv("RESA_CUDA_SKINNY_GEMM");
    return v != nullptr && std::string(v) == "1";
  }();
  return on;
}

bool SwiGluEpilogue() { return swiglu_epilogue.load(std::memory_order_relaxed); }
void SetSwiGluEpilogue(bool on) { swiglu_epilogue.store(on, std::memory_order_relaxed); }
bool FusedNorms() { return fused_norms.load(std::memory_order_relaxed); }
void SetFusedNorms(bool on) { fused_norms.store(on, std::memory_order_relaxed); }
bool SelectionHints() { return selection_hints.load(std::memory_order_relaxed); }
void SetSelectionHints(bool on) { selection_hints.store(on, std::memory_order_relaxed); }

}  // namespace resa::cuda
