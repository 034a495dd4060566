// ReSA decoding over a batch of sequences (resa-spec.md §2-3): dense chunked prefill, then
// decode steps that are dense, block-sparse, or block-sparse with a dense rectification of the
// last f tokens every f steps. Each sequence has its own mode and rectification phase; all the
// sequences fed in one Step share one forward, and all those due for rectification after it share
// one dense pass. Sampling stays with the caller (which also makes teacher forcing trivial).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/engine/cpu_model.h"
#include "runtime/engine/kv_cache.h"

namespace resa {

enum class DecodeMode {
  kDense,   // every decode step attends to the whole context
  kSparse,  // block-sparse steps, never rectified
  kResa,    // block-sparse steps, rectified every `rectify_every` tokens
};

absl::StatusOr<DecodeMode> ParseDecodeMode(std::string_view name);
const char* DecodeModeName(DecodeMode mode);

struct ResaOptions {
  DecodeMode mode = DecodeMode::kResa;
  float sparse_ratio = 0.1f;   // kept fraction of blocks (--sparse-ratio)
  int32_t min_blocks = 16;     // n_min (--min-blocks)
  int32_t rectify_every = 32;  // f (--rectify-every); used in kResa mode

  absl::Status Validate() const;  // messages name the flag
};

struct SequenceReport {
  int32_t prompt_tokens = 0;
  int32_t decode_steps = 0;
  int32_t sparse_steps = 0;        // steps where some block was skipped
  int64_t blocks_read = 0;         // summed over steps, layers and KV heads
  int64_t blocks_total = 0;        // what dense steps would have read
  int32_t rectifications = 0;
  int32_t rectified_tokens = 0;
};

class Decoder {
 public:
  Decoder(CpuModel& model, KvCache& cache) : model_(model), cache_(cache) {}
  ~Decoder();

  // Prefills `prompt` densely in chunks of `prefill_chunk` tokens and returns the new sequence's
  // id; logits(id) then holds the last prompt position's logits.
  absl::StatusOr<int> Start(std::span<const int32_t> prompt, const ResaOptions& options,
                            int prefill_chunk = 512);

  struct Feed {
    int id;
    int32_t token;
  };
  // One decode step: each fed sequence appends its token (attending densely or sparsely per its
  // mode), logits(id) is refreshed; then every kResa sequence whose count of fed tokens reached a
  // multiple of f re-runs its last f tokens densely (one pass for all of them), which rewrites
  // their K/V and summaries; those logits are discarded. Errors leave sequences unchanged.
  absl::Status Step(std::span<const Feed> feeds);

  const float* logits(int id) const { return seqs_[id]->logits.data(); }
  const SequenceKv& kv(int id) const { return seqs_[id]->kv; }
  const SequenceReport& report(int id) const { return seqs_[id]->report; }
  // Returns the sequence's pages to the cache; the id stays valid for report().
  void Finish(int id);

  // Copies a sequence (K/V, summaries and state) into a new one with its own pages: a prompt
  // prefilled once can be decoded in several modes. The copy takes `options`.
  absl::StatusOr<int> Fork(int id, const ResaOptions& options);

  double rectify_seconds() const { return rectify_seconds_; }
  double step_seconds() const { return step_seconds_; }
  double prefill_seconds() const { return prefill_seconds_; }
  CpuModel& model() { return model_; }

 private:
  struct Seq {
    ResaOptions options;
    SparseAttention sparse;
    SequenceKv kv;
    std::vector<float> logits;
    std::vector<int32_t> fed;          // decode tokens fed since the prefill
    bool sparse_since_rectify = false; // a skipped block since the last rectification
    bool finished = false;
    SequenceReport report;
  };
  absl::Status Rectify(std::span<const int> ids);

  CpuModel& model_;
  KvCache& cache_;
  std::vector<std::unique_ptr<Seq>> seqs_;
  double rectify_seconds_ = 0.0, step_seconds_ = 0.0, prefill_seconds_ = 0.0;
};

}  // namespace resa
