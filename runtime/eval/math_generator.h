// Generation backends of the math evaluation: a batch of prompts in, one finished generation per
// prompt out. In process on the CPU engine (continuous batching over one Decoder), or through a
// resa coordinator over gRPC (--server; compiled when RESA_HAVE_GRPC).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "runtime/engine/cpu_weights.h"
#include "runtime/engine/decoder.h"
#include "runtime/engine/sampler.h"
#include "runtime/tokenizer/tokenizer.h"

namespace resa {

struct GenerationRequest {
  std::string prompt;   // text; special-token strings in it ("<think>") are the model's tokens
  bool chat = false;    // render `prompt` as one user turn with the model's chat template
  int max_new_tokens = 256;
  SamplingParams sampling;  // seed included: the caller derives one per item
  ResaOptions resa;
};

struct GenerationResult {
  std::string text;           // generated text, stop token excluded
  int prompt_tokens = 0;
  int generated_tokens = 0;   // the stop token counts when there was one
  std::string finish_reason;  // "stop" (a stop token), "length" (max_new_tokens), "context"
  SequenceReport report;      // blocks read, rectifications
  double seconds = 0.0;       // admission to completion
};

// Called once per finished request, with its index in the batch, from one thread at a time.
// A non-OK status stops Generate, which returns it.
using GenerationDone = std::function<absl::Status(size_t index, GenerationResult result)>;

class MathGenerator {
 public:
  virtual ~MathGenerator() = default;
  // Runs every request (up to the backend's batch size at once, in order of admission) and
  // reports each as it finishes. Errors carry the request index and backend context.
  virtual absl::Status Generate(std::span<const GenerationRequest> requests,
                                const GenerationDone& on_done) = 0;
  virtual std::string Describe() const = 0;  // for logs and the run record
};

struct CpuGeneratorOptions {
  int batch = 8;            // sequences decoded together
  int prefill_chunk = 512;  // prompt tokens per prefill forward
};

// In-process generation. Each request gets its own Sampler (seeded from its SamplingParams) and
// stops at the tokenizer's StopIds(); a finished sequence's slot is refilled at once from the
// queue. The KV cache is sized per Generate call for `batch` sequences of the longest prompt
// plus max_new_tokens. `weights` and `tokenizer` must outlive the generator.
std::unique_ptr<MathGenerator> MakeCpuGenerator(const CpuWeights& weights,
                                                const Tokenizer& tokenizer,
                                                const CpuGeneratorOptions& options);

struct ServerGeneratorOptions {
  std::string address;             // host:port of a resa coordinator
  int concurrency = 8;             // Generate streams open at once
  double timeout_seconds = 0.0;    // per request; 0 = none
};

// Generation through a coordinator's Resa.Generate streams. Unimplemented when this build has no
// gRPC (the one place that knows).
absl::StatusOr<std::unique_ptr<MathGenerator>> MakeServerGenerator(
    const ServerGeneratorOptions& options);

}  // namespace resa
