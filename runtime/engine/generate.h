// One sequence, end to end: chunked dense prefill of a prompt, then sampled decode steps (dense,
// sparse or ReSA) until a stop token or the token budget, with a callback per generated token.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"
#include "runtime/engine/cpu_model.h"
#include "runtime/engine/decoder.h"
#include "runtime/engine/model_backend.h"
#include "runtime/engine/sampler.h"

namespace resa {

struct GenerateOptions {
  int max_new_tokens = 256;
  int prefill_chunk = 0;  // prompt tokens per prefill forward; 0: the backend's default
  SamplingParams sampling;
  ResaOptions resa{.mode = DecodeMode::kDense};
  std::vector<int32_t> stop_ids;  // generation ends after emitting one of these
  // Where tokens are sampled. false (default): by the backend where its logits live
  // (ModelBackend::Sample; on CUDA only the token ids come back, not the logits). true: each
  // step's logits are copied to the host and the host Sampler picks (same rule, same tokens).
  bool host_sampling = false;
  // Distributed runs: every rank of `agree` calls Generate; the token rank 0 samples is
  // broadcast, so all ranks feed the same tokens whatever their logits' last bits. Null: alone.
  Communicator* agree = nullptr;
};

struct GenerateStats {
  int prompt_tokens = 0;
  int generated_tokens = 0;
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;  // from the first decode step to the last (first token excluded)
  bool stopped_by_token = false;
  bool stopped_by_context = false;
  SequenceReport report;  // blocks read, rectifications
  ForwardStats forward;   // decode-step time in selection and attention
  double rectify_seconds = 0.0;

  double prefill_tokens_per_second() const;
  double decode_tokens_per_second() const;
};

// Called with each generated token; return false to stop early.
using TokenCallback = std::function<bool(int32_t token)>;

// Runs prompt + generation in a fresh sequence of `cache`, released at the end. Generation also
// ends, with stopped_by_context set, when the cache cannot hold another token.
absl::StatusOr<GenerateStats> Generate(ModelBackend& backend, std::span<const int32_t> prompt,
                                       const GenerateOptions& options,
                                       const TokenCallback& on_token);
// The CPU backend over `model` and `cache`.
absl::StatusOr<GenerateStats> Generate(CpuModel& model, KvCache& cache,
                                       std::span<const int32_t> prompt,
                                       const GenerateOptions& options,
                                       const TokenCallback& on_token);

}  // namespace resa
