// The seam between the ReSA policy (Decoder: which rows are sparse, when to rectify, reports)
// and the machine that runs the model (CPU or CUDA): one policy, several backends.
//
// A backend owns its weights' view and its paged KV cache (host or device memory). Sequences are
// described by SequenceKv (page table + length, host side) whatever the backend: page ids index
// the backend's own pool, so a SequenceKv must only be used with the backend that reserved it.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "runtime/engine/cpu_model.h"
#include "runtime/engine/kv_cache.h"
#include "runtime/engine/sampler.h"
#include "runtime/model/model_config.h"

namespace resa {

class ModelBackend {
 public:
  virtual ~ModelBackend() = default;

  virtual const ModelConfig& config() const = 0;
  // Same contract as CpuModel::Forward: runs the chunks (prefill, decode rows, rectification
  // rewrites), advances each seq->length, and writes the requested logits rows (host memory,
  // [rows][vocab], chunk order); a null `logits` computes them but returns none. An error
  // leaves the cache and the sequences unchanged.
  virtual absl::Status Forward(std::span<const ForwardChunk> chunks, float* logits) = 0;
  // Samples one token per entry from the logits rows of the last Forward that computed any
  // (a forward without logits rows, e.g. a rectification, leaves them in place), where they
  // live, with SampleWithUniform's rule: tokens[i] from row rows[i].row (chunk order, as
  // Forward writes logits) with rows[i].params and rows[i].u. Several entries may name the same
  // row. InvalidArgument for a row out of range or invalid params. Callers that need no
  // logits pass a null destination to Forward (Decoder::set_host_logits(false)) and sample here.
  virtual absl::Status Sample(std::span<const RowSampling> rows, int32_t* tokens) = 0;
  // Gives `to` (empty) its own pages holding a copy of `from`'s K/V and summaries, and from's
  // length. ResourceExhausted when the pool is short (to stays empty).
  virtual absl::Status CopySequence(const SequenceKv& from, SequenceKv& to) = 0;
  // Returns all of the sequence's pages to the pool.
  virtual void Release(SequenceKv& seq) = 0;
  // Positions one sequence can hold at most (the whole pool).
  virtual int32_t max_tokens() const = 0;
  // Prompt tokens per prefill forward when the caller leaves the choice to the backend
  // (Decoder::Start with 0): 512 on the CPU (an L2-sized chunk); the CUDA backend's is larger.
  virtual int prefill_chunk() const { return 512; }
  // The KV pool in 16-token pages: its size and the pages no sequence holds.
  virtual int32_t num_pages() const = 0;
  virtual int32_t free_pages() const = 0;
  // Time spent in selection and sparse/dense attention (CpuModel::stats semantics; a backend
  // that cannot attribute time per kernel without synchronising reports zeros).
  virtual ForwardStats stats() const = 0;
  virtual void ResetStats() = 0;
  // Benchmarks: gives the empty sequence `seq` `length` positions of random K/V (with block
  // summaries) without running the model, so decode speed can be measured at long contexts
  // without a prefill. Backends without such a fill return Unimplemented.
  virtual absl::Status AdoptSyntheticContext(SequenceKv& /*seq*/, int32_t /*length*/) {
    return absl::UnimplementedError("this backend cannot fill synthetic contexts");
  }
  // Benchmarks: while on, forwards record the device time of each group of kernels (slower:
  // no CUDA graphs); TakeProfile returns (group, milliseconds) summed since the last call and
  // resets. Backends without it return nothing.
  virtual void set_profiling(bool /*on*/) {}
  virtual std::vector<std::pair<std::string, double>> TakeProfile() { return {}; }
  // Debug hook (CpuModel::set_selection_trace semantics): every sparse row's selection per
  // layer and KV head. Backends without it ignore the call and report false.
  virtual bool set_selection_trace(SelectionTrace /*trace*/) { return false; }
};

// The CPU backend: a CpuModel and the KvCache it writes (neither owned).
class CpuBackend final : public ModelBackend {
 public:
  CpuBackend(CpuModel& model, KvCache& cache) : model_(model), cache_(cache) {}

  const ModelConfig& config() const override { return model_.config(); }
  absl::Status Forward(std::span<const ForwardChunk> chunks, float* logits) override;
  absl::Status Sample(std::span<const RowSampling> rows, int32_t* tokens) override;
  absl::Status CopySequence(const SequenceKv& from, SequenceKv& to) override;
  void Release(SequenceKv& seq) override { cache_.Release(seq); }
  int32_t max_tokens() const override { return cache_.max_tokens(); }
  int32_t num_pages() const override { return cache_.num_pages(); }
  int32_t free_pages() const override { return cache_.free_pages(); }
  ForwardStats stats() const override { return model_.stats(); }
  void ResetStats() override { model_.ResetStats(); }
  bool set_selection_trace(SelectionTrace trace) override {
    model_.set_selection_trace(std::move(trace));
    return true;
  }

  CpuModel& model() { return model_; }
  KvCache& cache() { return cache_; }

 private:
  CpuModel& model_;
  KvCache& cache_;
  std::vector<float> scratch_;  // the last forward's logits rows (also copied to a destination)
  int64_t scratch_rows_ = 0;
  std::vector<std::pair<float, int32_t>> cand_;  // SampleWithUniform's scratch
};

// A CPU backend that owns its cache and model (what the backend factory hands out).
class OwningCpuBackend final : public ModelBackend {
 public:
  OwningCpuBackend(std::unique_ptr<KvCache> cache, const CpuWeights& weights)
      : cache_(std::move(cache)), model_(weights, *cache_), inner_(model_, *cache_) {}

  const ModelConfig& config() const override { return inner_.config(); }
  absl::Status Forward(std::span<const ForwardChunk> chunks, float* logits) override {
    return inner_.Forward(chunks, logits);
  }
  absl::Status Sample(std::span<const RowSampling> rows, int32_t* tokens) override {
    return inner_.Sample(rows, tokens);
  }
  absl::Status CopySequence(const SequenceKv& from, SequenceKv& to) override {
    return inner_.CopySequence(from, to);
  }
  void Release(SequenceKv& seq) override { inner_.Release(seq); }
  int32_t max_tokens() const override { return inner_.max_tokens(); }
  int32_t num_pages() const override { return inner_.num_pages(); }
  int32_t free_pages() const override { return inner_.free_pages(); }
  ForwardStats stats() const override { return inner_.stats(); }
  void ResetStats() override { inner_.ResetStats(); }
  bool set_selection_trace(SelectionTrace trace) override {
    return inner_.set_selection_trace(std::move(trace));
  }

 private:
  std::unique_ptr<KvCache> cache_;
  CpuModel model_;
  CpuBackend inner_;
};

}  // namespace resa
