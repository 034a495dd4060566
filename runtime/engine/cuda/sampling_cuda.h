// Sampling one token per logits row on the device, with the rule of resa::SampleWithUniform
// (runtime/engine/sampler.h, the CPU twin): greedy argmax, or temperature softmax over the
// top_k candidates ordered by (logit desc, id asc), the top_p nucleus, and the inverse CDF at
// u * total.
//
// One thread-block cluster of up to 8 CTAs per row (fewer when the rows would need more than
// one wave), each CTA holding a slice of the row; histograms and reductions are summed over the
// cluster through distributed shared memory in rank order, so every CTA takes the same
// decisions. No sort: candidates are cut by radix searches over an order-preserving 32-bit key
// of each logit, 8 bits per pass, with 256-bin histograms in shared memory (counts for the top-k
// cut; weight sums in fp64 for the top-p cut and the inverse CDF); a cut inside a group of equal
// logits (equal weights) is resolved by arithmetic and the id by an ordered block scan in the
// CTA whose slice holds it. Per non-greedy row: one max pass, 4 passes for top-k (when 0 <
// top_k < vocab), one weight pass, 4 for top-p (when top_p < 1), 4 for the draw, and one id scan
// when the drawn logit is tied. Greedy rows (temperature 0 or top_k 1) take the max pass only.
//
// Exactness: weights are float(exp(double(logit - max) / temperature)) as on the CPU; sums are
// fp64 in another order, so the token can differ from the twin's only where a cumulative mass
// lies within fp64 rounding of a cut (u * total, or top_p * total).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"

namespace resa::cuda {

// One row to sample (device memory, 24 bytes).
struct SampleRowSpec {
  int32_t row = 0;           // logits row
  float temperature = 0.0f;  // 0 = greedy
  int32_t top_k = 0;         // 0 = no limit
  float top_p = 1.0f;        // (0, 1]
  double u = 0.0;            // uniform in [0, 1); unused by greedy rows
};

struct SampleRowsParams {
  const float* logits = nullptr;  // fp32 [*][vocab]
  int vocab = 0;                  // 1 .. 2^30
  const SampleRowSpec* specs = nullptr;  // [num_rows]
  int num_rows = 0;                      // 0 .. 65535
  // Workspace fp32 [num_rows][vocab] (the rows' weights). May be null only when every row is
  // greedy: the kernel does not touch it then.
  float* weights = nullptr;
  int32_t* tokens = nullptr;  // out [num_rows]
};

// tokens[i] = the token of logits row specs[i].row under specs[i]. Device pointers; enqueues on
// `stream` without synchronising. Parameters are the caller's to validate (SamplingParams).
absl::Status SampleRowsCuda(const SampleRowsParams& p, cudaStream_t stream);

}  // namespace resa::cuda
