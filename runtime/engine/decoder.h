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
#include "runtime/engine/model_backend.h"

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
  // Decodes on any backend (CPU, CUDA), which must outlive the decoder.
  explicit Decoder(ModelBackend& backend) : backend_(backend) {}
  // The CPU backend over `model` and the cache it writes (both must outlive the decoder).
  Decoder(CpuModel& model, KvCache& cache);
  ~Decoder();

  // Prefills `prompt` densely in chunks of `prefill_chunk` tokens (0: the backend's
  // ModelBackend::prefill_chunk()) and returns the new sequence's id; logits(id) then holds the
  // last prompt position's logits.
  absl::StatusOr<int> Start(std::span<const int32_t> prompt, const ResaOptions& options,
                            int prefill_chunk = 0);

  struct Feed {
    int id;
    int32_t token;
  };
  // One decode step: each fed sequence appends its token (attending densely or sparsely per its
  // mode), logits(id) is refreshed; then, under the automatic schedule, every kResa sequence whose
  // count of unrectified tokens reached f re-runs them densely (one pass for all of them), which
  // rewrites their K/V and summaries; those logits are discarded. Errors leave sequences
  // unchanged.
  absl::Status Step(std::span<const Feed> feeds);

  // Who decides when sequences rectify: the decoder after each Step (every f tokens), or the
  // caller (a batch scheduler that defers some sequences to keep step times even) through
  // Rectify().
  enum class Schedule { kAutomatic, kExternal };
  void set_schedule(Schedule schedule) { schedule_ = schedule; }

  // Re-runs, in one dense pass, every given sequence's tokens fed since its last rectification
  // (its window may be shorter or longer than f under an external schedule). Sequences whose
  // window read every block already hold dense K/V and are only marked rectified.
  absl::Status Rectify(std::span<const int> ids);
  // Tokens fed since the sequence's last rectification (or its prefill).
  int32_t unrectified(int id) const { return seqs_.at(id)->unrectified; }
  bool running(int id) const {
    return id >= 0 && size_t(id) < seqs_.size() && !seqs_[id]->finished;
  }

  const float* logits(int id) const { return seqs_[id]->logits.data(); }
  // Off: decode steps still compute every fed sequence's logits on the backend but do not bring
  // them back, so logits(id) keeps the prefill's values (for callers that sample on the device
  // or feed their own tokens, e.g. benchmarks). On by default.
  void set_host_logits(bool on) { host_logits_ = on; }
  const SequenceKv& kv(int id) const { return seqs_[id]->kv; }
  const SequenceReport& report(int id) const { return seqs_[id]->report; }
  // Adopts a sequence whose K/V the backend already holds (e.g. a context filled synthetically
  // for a benchmark): positions [0, kv.length) count as the prompt, and logits(id) are zero
  // until the first Step. Takes ownership of the pages (Finish returns them).
  absl::StatusOr<int> Adopt(SequenceKv kv, const ResaOptions& options);

  // Returns the sequence's pages to the cache; the id stays valid for report().
  void Finish(int id);

  // Copies a sequence (K/V, summaries and state) into a new one with its own pages: a prompt
  // prefilled once can be decoded in several modes. The copy takes `options`.
  absl::StatusOr<int> Fork(int id, const ResaOptions& options);

  double rectify_seconds() const { return rectify_seconds_; }
  double step_seconds() const { return step_seconds_; }
  double prefill_seconds() const { return prefill_seconds_; }
  // The CpuModel of a decoder built by Decoder(CpuModel&, KvCache&); precondition: built so.
  CpuModel& model() { return *cpu_model_; }
  ModelBackend& backend() { return backend_; }

 private:
  struct Seq {
    ResaOptions options;
    SparseAttention sparse;
    SequenceKv kv;
    std::vector<float> logits;
    std::vector<int32_t> fed;          // decode tokens fed since the prefill
    bool sparse_since_rectify = false; // a skipped block since the last rectification
    int32_t unrectified = 0;           // tokens fed since the last rectification
    bool finished = false;
    SequenceReport report;
  };
  std::unique_ptr<Seq> NewSeq(const ResaOptions& options) const;

  std::unique_ptr<ModelBackend> owned_backend_;  // set by the CPU constructor
  ModelBackend& backend_;
  CpuModel* cpu_model_ = nullptr;
  std::vector<std::unique_ptr<Seq>> seqs_;
  double rectify_seconds_ = 0.0, step_seconds_ = 0.0, prefill_seconds_ = 0.0;
  Schedule schedule_ = Schedule::kAutomatic;
  bool host_logits_ = true;
  std::vector<float> step_logits_;  // [fed][vocab], reused across steps
};

}  // namespace resa
