// Token sampling from logits: greedy, or temperature with optional top-k and top-p, seeded.
//
// One rule, two halves: a Sampler owns a sequence's RNG and draws one uniform u per sampled
// token (only when temperature > 0); SampleWithUniform is the pure rule that turns (logits,
// params, u) into a token. Sampler::Sample = Draw + SampleWithUniform on host logits; a backend
// applies the same rule where its logits live (ModelBackend::Sample, the CUDA kernel of
// runtime/engine/cuda/sampling_cuda.h), so host and device sampling give the same tokens.
#pragma once

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace resa {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy (argmax; ties to the lowest id)
  int top_k = 0;             // 0 = no limit
  float top_p = 1.0f;        // nucleus: smallest prefix (by prob) whose mass reaches top_p
  uint64_t seed = 0;

  absl::Status Validate() const;  // ranges; messages name the flag
};

// One token to sample from a backend's logits: which row of the last Forward's logits (chunk
// order, as Forward writes them), the rule's parameters (the seed is not used) and the uniform
// drawn for it (Sampler::Draw; ignored when temperature == 0).
struct RowSampling {
  int32_t row = 0;
  SamplingParams params;
  double u = 0.0;
};

// The sampling rule, deterministic given u in [0, 1):
//   temperature == 0: argmax (ties to the lowest id);
//   else candidates ordered by (logit desc, id asc), the first top_k of them (0 = all); weights
//   w = float(exp(double(logit - max) / temperature)), total = their sum in double; when
//   top_p < 1, the smallest prefix whose running mass (sum of w / total) reaches top_p (at least
//   one token), total recomputed over it; then the first candidate whose running weight sum
//   reaches x = u * total (inverse CDF; the last candidate if rounding leaves x unreached).
// NaN logits count as -inf and never win; when the largest logit is not finite (+inf, or no
// finite logit), the result is ArgMax. `scratch` (optional) is reused between calls.
int32_t SampleWithUniform(const float* logits, int vocab, const SamplingParams& params, double u,
                          std::vector<std::pair<float, int32_t>>* scratch = nullptr);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params) : p_(params), rng_(params.seed) {}

  // Samples from host logits: SampleWithUniform(logits, vocab, params, Draw()).
  int32_t Sample(const float* logits, int vocab_size);
  // The uniform for the next token: a canonical double in [0, 1) from the sequence's mt19937_64,
  // drawn only when temperature > 0 (greedy returns 0 and leaves the stream untouched).
  double Draw();
  // The next token's entry for ModelBackend::Sample: Draw() and the params, for logits row
  // `row`. A batch caller keeps one Sampler per sequence and calls Next once per sampled token.
  RowSampling Next(int32_t row) { return RowSampling{row, p_, Draw()}; }
  const SamplingParams& params() const { return p_; }

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;
};

// (value desc, index asc); NaN never wins (index 0 when every value is NaN).
int32_t ArgMax(const float* logits, int n);

}  // namespace resa
