// Device memory for the CUDA backend: an owning device allocation, bf16 model weights on the
// device, and the paged bf16 KV cache (pages + block summaries) with a host-side page allocator.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cuda/paged_kv_cuda.h"
#include "runtime/engine/cpu_weights.h"
#include "runtime/engine/cuda/page_allocator.h"
#include "runtime/engine/kv_cache.h"
#include "runtime/engine/tp_shard.h"
#include "runtime/model/model_config.h"

namespace resa::cuda {

// One cudaMalloc, freed on destruction. Errors name the byte count and what it was for.
class DeviceAllocation {
 public:
  static absl::StatusOr<DeviceAllocation> Create(size_t bytes, const std::string& what);
  DeviceAllocation() = default;
  DeviceAllocation(DeviceAllocation&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  DeviceAllocation& operator=(DeviceAllocation&& o) noexcept;
  DeviceAllocation(const DeviceAllocation&) = delete;
  DeviceAllocation& operator=(const DeviceAllocation&) = delete;
  ~DeviceAllocation();

  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Device-to-device copy bandwidth (GB/s, bytes read + written), best of 10 copies of `bytes`.
absl::StatusOr<double> MeasureCopyGbps(size_t bytes);

// Local shapes of the rank's TpShard (lq = local heads x head_dim, lkv = local KV heads x
// head_dim, li = local intermediate columns); the model's own on one rank.
struct DeviceLayerWeights {
  const float* input_norm = nullptr;     // [hidden] fp32
  const __nv_bfloat16* qkv = nullptr;    // [lq + 2 lkv][hidden]
  const float* qkv_bias = nullptr;       // [lq + 2 lkv] fp32 or null
  const __nv_bfloat16* o = nullptr;      // [hidden][lq]
  const float* post_norm = nullptr;      // [hidden] fp32
  const __nv_bfloat16* gate_up = nullptr;  // [2 li][hidden]: gate rows, then up
  const __nv_bfloat16* down = nullptr;   // [hidden][li]
};

// One rank's model on one device: matrices bf16 (the CPU layout of CpuWeights), norms and
// biases fp32. Under tensor parallelism the rank's TpShard (tp_shard.h), as CpuWeights holds it:
// column-parallel qkv and gate_up rows, row-parallel o and down columns, lm_head rows of its
// vocabulary range; embedding and norms replicated.
class DeviceWeights {
 public:
  // Rounds every fp32 weight of `w` (the whole model or one TP shard) to bf16 (nearest even) on
  // the device.
  static absl::StatusOr<std::unique_ptr<DeviceWeights>> FromCpu(const CpuWeights& w,
                                                                cudaStream_t stream);
  // Random weights of `config`'s exact shapes (of `shard`'s local shapes) drawn on the device
  // (matrices uniform with variance 1/cols, norms 1 +- 0.1, biases +- 0.1): full-size
  // benchmarks without any file. Shards of one seed are not slices of one model.
  static absl::StatusOr<std::unique_ptr<DeviceWeights>> Random(const ModelConfig& config,
                                                               uint64_t seed, cudaStream_t stream);
  static absl::StatusOr<std::unique_ptr<DeviceWeights>> Random(const ModelConfig& config,
                                                               const TpShard& shard,
                                                               uint64_t seed, cudaStream_t stream);

  const ModelConfig& config() const { return config_; }
  const TpShard& shard() const { return shard_; }
  const __nv_bfloat16* embed() const { return embed_; }
  // The local lm_head rows [shard.vocab_size][hidden] (inside embed() when tied).
  const __nv_bfloat16* lm_head() const { return lm_head_; }
  const float* final_norm() const { return final_norm_; }
  const DeviceLayerWeights& layer(int l) const { return layers_[l]; }
  // Bytes a decode step reads (every layer's matrices, lm_head; the embedding row excluded).
  uint64_t DecodeBytes() const;
  uint64_t bytes() const { return mem_.bytes(); }

 private:
  DeviceWeights() = default;
  // Lays every tensor out in one allocation.
  absl::Status Allocate(const ModelConfig& config, const TpShard& shard);

  ModelConfig config_;
  TpShard shard_;
  DeviceAllocation mem_;
  __nv_bfloat16* embed_ = nullptr;
  __nv_bfloat16* lm_head_ = nullptr;
  float* final_norm_ = nullptr;
  std::vector<DeviceLayerWeights> layers_;
  // Mutable views of the same tensors, for filling.
  struct Fill {
    void* ptr;
    int64_t rows, cols;
    bool bf16, is_norm;
  };
  std::vector<Fill> fills_;
};

// The paged KV cache in device memory: per layer, K and V [pages][hkv][16][d] bf16 and
// summaries [pages / 64][hkv][2][d][64] bf16 (kernels/cuda/paged_kv_cuda.h, rounded up to whole
// groups of 64 pages); the page allocator and the sequences' page tables stay on the host
// (SequenceKv, as the CPU cache).
//
// Pages are handed out in aligned groups of 64 (PageAllocator): local blocks 64k .. 64k + 63 of a
// sequence usually sit on pages 64g .. 64g + 63 in order, where the selection reads the group's
// summaries as whole 128-byte lines of the parts it needs (half the bytes); any other assignment
// stays correct, on a slower path.
//
// Under TP x SP (KvShard, kv_cache.h) a rank holds its KV heads only and, of every sequence, the
// blocks its SequenceShard owns: page_table[j] is the page of logical block shard.GlobalBlock(j),
// and every SP rank reserves ceil(blocks / S) pages per sequence, as the CPU cache does.
class DeviceKvCache {
 public:
  // Bytes one page takes over all layers (K, V and summary), for `num_kv_heads` KV heads (0: the
  // config's).
  static uint64_t PageBytes(const ModelConfig& config, int num_kv_heads = 0);
  static absl::StatusOr<std::unique_ptr<DeviceKvCache>> Create(const ModelConfig& config,
                                                               int32_t num_pages,
                                                               const KvShard& shard = {});

  PagedKvCuda layer(int l) const { return layers_[l]; }
  const SequenceShard& shard() const { return shard_; }
  int32_t num_pages() const { return num_pages_; }
  int32_t free_pages() const { return pages_.free_pages(); }
  // Positions a sequence can hold: every page of the pool on each of the S ranks.
  int32_t max_tokens() const { return num_pages_ * shard_.size * kPageTokens; }
  uint64_t bytes() const;

  // Grows `seq` to hold `length` positions; ResourceExhausted (seq unchanged) when short.
  absl::Status Reserve(SequenceKv& seq, int32_t length);
  void ShrinkPages(SequenceKv& seq, size_t num_pages);
  void Release(SequenceKv& seq);

 private:
  DeviceKvCache() = default;
  int32_t num_pages_ = 0;
  SequenceShard shard_;
  std::vector<DeviceAllocation> mem_;  // per layer: k, v, summary in one allocation
  std::vector<PagedKvCuda> layers_;
  PageAllocator pages_{0};
};

}  // namespace resa::cuda
