#include "runtime/engine/cuda/device_memory.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "runtime/core/status.h"
#include "runtime/engine/cuda/model_ops_cuda.h"

namespace resa::cuda {
namespace {

static_assert(PageAllocator::kGroupPages == kSummaryGroup,
              "DeviceKvCache allocates pages in the groups of the summary layout");

size_t Align(size_t x) { return (x + 255) & ~size_t(255); }

}  // namespace

absl::StatusOr<DeviceAllocation> DeviceAllocation::Create(size_t bytes, const std::string& what) {
  DeviceAllocation a;
  if (bytes == 0) return a;
  const cudaError_t err = cudaMalloc(&a.ptr_, bytes);
  if (err != cudaSuccess) {
    cudaGetLastError();
    a.ptr_ = nullptr;
    int device = -1;
    cudaGetDevice(&device);
    return absl::ResourceExhaustedError(absl::StrCat("cudaMalloc of ", bytes, " bytes for ", what,
                                                     " on CUDA device ", device, ": ",
                                                     cudaGetErrorString(err)));
  }
  a.bytes_ = bytes;
  return a;
}

DeviceAllocation& DeviceAllocation::operator=(DeviceAllocation&& o) noexcept {
  if (this != &o) {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

DeviceAllocation::~DeviceAllocation() {
  if (ptr_ != nullptr) cudaFree(ptr_);
}

absl::StatusOr<double> MeasureCopyGbps(size_t bytes) {
  RESA_ASSIGN_OR_RETURN(DeviceAllocation a, DeviceAllocation::Create(bytes, "copy benchmark"));
  RESA_ASSIGN_OR_RETURN(DeviceAllocation b, DeviceAllocation::Create(bytes, "copy benchmark"));
  RESA_RETURN_IF_ERROR(CudaStatus(cudaMemset(a.as<void>(), 1, bytes), "cudaMemset"));
  cudaEvent_t start, stop;
  RESA_RETURN_IF_ERROR(CudaStatus(cudaEventCreate(&start), "cudaEventCreate"));
  RESA_RETURN_IF_ERROR(CudaStatus(cudaEventCreate(&stop), "cudaEventCreate"));
  float best_ms = 1e30f;
  absl::Status st;
  for (int i = 0; i < 12 && st.ok(); ++i) {
    cudaEventRecord(start);
    st = CudaStatus(cudaMemcpy(b.as<void>(), a.as<void>(), bytes, cudaMemcpyDeviceToDevice),
                    "cudaMemcpy (copy benchmark)");
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, start, stop);
    if (i >= 2) best_ms = std::min(best_ms, ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  RESA_RETURN_IF_ERROR(st);
  return 2.0 * double(bytes) / (best_ms * 1e-3) / 1e9;
}

absl::Status DeviceWeights::Allocate(const ModelConfig& c, const TpShard& shard) {
  config_ = c;
  shard_ = shard;
  const int64_t hid = c.hidden_size, lq = int64_t(shard.num_heads) * c.head_dim,
                qkv = lq + 2 * int64_t(shard.num_kv_heads) * c.head_dim,
                inter = shard.inter_size;
  // Pass 1 sizes, pass 2 assigns pointers.
  size_t offset = 0;
  std::vector<std::pair<size_t, Fill>> plan;
  auto add = [&](int64_t rows, int64_t cols, bool bf16, bool is_norm) {
    const size_t at = offset;
    offset += Align(size_t(rows * cols) * (bf16 ? 2 : 4));
    plan.push_back({at, Fill{nullptr, rows, cols, bf16, is_norm}});
    return plan.size() - 1;
  };
  const size_t embed = add(c.vocab_size, hid, true, false);
  const size_t lm = c.tie_word_embeddings ? embed : add(shard.vocab_size, hid, true, false);
  const size_t fnorm = add(1, hid, false, true);
  struct L {
    size_t in, qkv, bias, o, post, gu, down;
  };
  std::vector<L> ls(size_t(c.num_layers));
  for (L& l : ls) {
    l.in = add(1, hid, false, true);
    l.qkv = add(qkv, hid, true, false);
    l.bias = c.attention_bias ? add(1, qkv, false, false) : SIZE_MAX;
    l.o = add(hid, lq, true, false);
    l.post = add(1, hid, false, true);
    l.gu = add(2 * inter, hid, true, false);
    l.down = add(hid, inter, true, false);
  }
  RESA_ASSIGN_OR_RETURN(mem_, DeviceAllocation::Create(offset, "model weights"));
  char* base = mem_.as<char>();
  for (auto& [at, f] : plan) f.ptr = base + at;
  auto bf = [&](size_t i) { return static_cast<__nv_bfloat16*>(plan[i].second.ptr); };
  auto f32 = [&](size_t i) { return static_cast<float*>(plan[i].second.ptr); };
  embed_ = bf(embed);
  lm_head_ = c.tie_word_embeddings ? embed_ + size_t(shard.vocab_begin) * hid : bf(lm);
  final_norm_ = f32(fnorm);
  layers_.clear();
  for (const L& l : ls) {
    DeviceLayerWeights d;
    d.input_norm = f32(l.in);
    d.qkv = bf(l.qkv);
    d.qkv_bias = l.bias == SIZE_MAX ? nullptr : f32(l.bias);
    d.o = bf(l.o);
    d.post_norm = f32(l.post);
    d.gate_up = bf(l.gu);
    d.down = bf(l.down);
    layers_.push_back(d);
  }
  fills_.clear();
  for (auto& [at, f] : plan) fills_.push_back(f);
  return absl::OkStatus();
}

uint64_t DeviceWeights::DecodeBytes() const {
  const ModelConfig& c = config_;
  const uint64_t hid = c.hidden_size, lq = uint64_t(shard_.num_heads) * c.head_dim,
                 qkv = lq + 2 * uint64_t(shard_.num_kv_heads) * c.head_dim,
                 inter = shard_.inter_size;
  const uint64_t per_layer = 2 * (qkv * hid + hid * lq + 3 * inter * hid) + 8 * hid;
  return per_layer * c.num_layers + 2 * uint64_t(shard_.vocab_size) * hid + 4 * hid;
}

absl::StatusOr<std::unique_ptr<DeviceWeights>> DeviceWeights::FromCpu(const CpuWeights& w,
                                                                      cudaStream_t stream) {
  std::unique_ptr<DeviceWeights> d(new DeviceWeights());
  RESA_RETURN_IF_ERROR(d->Allocate(w.config, w.shard));
  const ModelConfig& c = w.config;
  constexpr size_t kStage = size_t(16) << 20;  // fp32 elements staged per copy
  RESA_ASSIGN_OR_RETURN(DeviceAllocation stage,
                        DeviceAllocation::Create(kStage * sizeof(float), "weight staging"));
  auto put_bf16 = [&](const float* src, size_t n, __nv_bfloat16* dst) -> absl::Status {
    for (size_t i = 0; i < n; i += kStage) {
      const size_t m = std::min(kStage, n - i);
      RESA_RETURN_IF_ERROR(CudaStatus(
          cudaMemcpyAsync(stage.as<float>(), src + i, m * 4, cudaMemcpyHostToDevice, stream),
          "uploading weights"));
      RESA_RETURN_IF_ERROR(ToBf16Cuda(stage.as<float>(), int64_t(m), dst + i, stream));
      // The staging buffer is reused: the conversion must finish before the next upload.
      RESA_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream), "converting weights"));
    }
    return absl::OkStatus();
  };
  auto put_f32 = [&](const FloatBuffer& src, const float* dst) -> absl::Status {
    return CudaStatus(cudaMemcpy(const_cast<float*>(dst), src.data(), src.size() * 4,
                                 cudaMemcpyHostToDevice),
                      "uploading norms");
  };
  RESA_RETURN_IF_ERROR(put_bf16(w.embed.data(), w.embed.size(), d->embed_));
  if (!c.tie_word_embeddings) {
    if (w.lm_head.empty()) return absl::InvalidArgumentError("untied model without lm_head");
    RESA_RETURN_IF_ERROR(put_bf16(w.lm_head.data(), w.lm_head.size(), d->lm_head_));
  }
  RESA_RETURN_IF_ERROR(put_f32(w.final_norm, d->final_norm_));
  for (int l = 0; l < c.num_layers; ++l) {
    const CpuLayerWeights& s = w.layers[l];
    const DeviceLayerWeights& t = d->layers_[l];
    RESA_RETURN_IF_ERROR(put_f32(s.input_norm, t.input_norm));
    RESA_RETURN_IF_ERROR(put_f32(s.post_norm, t.post_norm));
    if (t.qkv_bias != nullptr) {
      if (s.qkv_bias.empty()) return absl::InvalidArgumentError("Qwen2 model without QKV bias");
      RESA_RETURN_IF_ERROR(put_f32(s.qkv_bias, t.qkv_bias));
    }
    RESA_RETURN_IF_ERROR(put_bf16(s.qkv.data(), s.qkv.size(), const_cast<__nv_bfloat16*>(t.qkv)));
    RESA_RETURN_IF_ERROR(put_bf16(s.o.data(), s.o.size(), const_cast<__nv_bfloat16*>(t.o)));
    RESA_RETURN_IF_ERROR(
        put_bf16(s.gate_up.data(), s.gate_up.size(), const_cast<__nv_bfloat16*>(t.gate_up)));
    RESA_RETURN_IF_ERROR(
        put_bf16(s.down.data(), s.down.size(), const_cast<__nv_bfloat16*>(t.down)));
  }
  return d;
}

absl::StatusOr<std::unique_ptr<DeviceWeights>> DeviceWeights::Random(const ModelConfig& config,
                                                                     uint64_t seed,
                                                                     cudaStream_t stream) {
  RESA_RETURN_IF_ERROR(config.Validate("random device weights"));
  return Random(config, FullTpShard(config), seed, stream);
}

absl::StatusOr<std::unique_ptr<DeviceWeights>> DeviceWeights::Random(const ModelConfig& config,
                                                                     const TpShard& shard,
                                                                     uint64_t seed,
                                                                     cudaStream_t stream) {
  RESA_RETURN_IF_ERROR(config.Validate("random device weights"));
  std::unique_ptr<DeviceWeights> d(new DeviceWeights());
  RESA_RETURN_IF_ERROR(d->Allocate(config, shard));
  uint64_t s = seed * 0x100000001b3ull;
  for (const Fill& f : d->fills_) {
    s += 0x9e3779b97f4a7c15ull;
    const int64_t n = f.rows * f.cols;
    if (f.bf16) {
      RESA_RETURN_IF_ERROR(FillUniformBf16Cuda(static_cast<__nv_bfloat16*>(f.ptr), n, s,
                                               float(std::sqrt(3.0 / double(f.cols))), 0.0f,
                                               stream));
    } else {
      RESA_RETURN_IF_ERROR(FillUniformF32Cuda(static_cast<float*>(f.ptr), n, s, 0.1f,
                                              f.is_norm ? 1.0f : 0.0f, stream));
    }
  }
  RESA_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream), "filling random weights"));
  return d;
}

uint64_t DeviceKvCache::PageBytes(const ModelConfig& c, int num_kv_heads) {
  const uint64_t hkv = num_kv_heads > 0 ? num_kv_heads : c.num_kv_heads;
  const uint64_t kv = hkv * kPageTokens * c.head_dim * 2 * 2;
  const uint64_t summary = hkv * 2 * c.head_dim * 2;
  return (kv + summary) * c.num_layers;
}

absl::StatusOr<std::unique_ptr<DeviceKvCache>> DeviceKvCache::Create(const ModelConfig& c,
                                                                     int32_t num_pages,
                                                                     const KvShard& shard) {
  if (num_pages <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache of ", num_pages, " pages"));
  }
  if (c.head_dim != 64 && c.head_dim != 128) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the CUDA attention kernels take head_dim 64 or 128, the model has ", c.head_dim));
  }
  if (shard.blocks.size < 1 || shard.blocks.rank < 0 || shard.blocks.rank >= shard.blocks.size) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache of SP rank ", shard.blocks.rank,
                                                   " of ", shard.blocks.size));
  }
  const int hkv = shard.num_kv_heads > 0 ? shard.num_kv_heads : c.num_kv_heads;
  std::unique_ptr<DeviceKvCache> cache(new DeviceKvCache());
  cache->num_pages_ = num_pages;
  cache->shard_ = shard.blocks;
  const size_t page_elems = size_t(hkv) * kPageTokens * c.head_dim;
  const size_t kv_bytes = Align(size_t(num_pages) * page_elems * 2);
  const size_t sum_bytes = Align(SummaryPoolElems(num_pages, hkv, c.head_dim) * 2);
  for (int l = 0; l < c.num_layers; ++l) {
    RESA_ASSIGN_OR_RETURN(
        DeviceAllocation a,
        DeviceAllocation::Create(2 * kv_bytes + sum_bytes, absl::StrCat("KV cache layer ", l)));
    char* base = a.as<char>();
    cache->layers_.push_back(PagedKvCuda{
        reinterpret_cast<__nv_bfloat16*>(base), reinterpret_cast<__nv_bfloat16*>(base + kv_bytes),
        reinterpret_cast<__nv_bfloat16*>(base + 2 * kv_bytes), hkv, c.head_dim, num_pages});
    cache->mem_.push_back(std::move(a));
  }
  cache->pages_ = PageAllocator(num_pages);
  return cache;
}

uint64_t DeviceKvCache::bytes() const {
  uint64_t b = 0;
  for (const DeviceAllocation& a : mem_) b += a.bytes();
  return b;
}

absl::Status DeviceKvCache::Reserve(SequenceKv& seq, int32_t length) {
  const int64_t blocks = (int64_t(length) + kPageTokens - 1) / kPageTokens;
  const size_t need = size_t((blocks + shard_.size - 1) / shard_.size);
  if (need <= seq.page_table.size()) return absl::OkStatus();
  const size_t more = need - seq.page_table.size();
  if (more > size_t(pages_.free_pages())) {
    return absl::ResourceExhaustedError(
        absl::StrCat("device KV cache full: ", length, " positions need ", more, " more pages, ",
                     pages_.free_pages(), " of ", num_pages_, " free"));
  }
  for (size_t i = 0; i < more; ++i) seq.page_table.push_back(pages_.Take(seq.page_table));
  return absl::OkStatus();
}

void DeviceKvCache::ShrinkPages(SequenceKv& seq, size_t num_pages) {
  while (seq.page_table.size() > num_pages) {
    pages_.Free(seq.page_table.back());
    seq.page_table.pop_back();
  }
}

void DeviceKvCache::Release(SequenceKv& seq) {
  ShrinkPages(seq, 0);
  seq.length = 0;
}

}  // namespace resa::cuda
