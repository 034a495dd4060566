// Token sampling from logits: greedy, or temperature with optional top-k and top-p, seeded.
#pragma once

#include <cstdint>
#include <random>
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

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params) : p_(params), rng_(params.seed) {}
  int32_t Sample(const float* logits, int vocab_size);

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;
};

int32_t ArgMax(const float* logits, int n);

}  // namespace resa
