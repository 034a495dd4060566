// Sampling one token per logits row on the device, with the rule of resa::SampleWithUniform
// (runtime/engine/sampler.h, the CPU twin): greedy argmax, or temperature softmax over the
// top_k candidates ordered by (logit desc, id asc), the top_p nucleus, and the inverse CDF at
// u * total.
//
// One thread-block cluster per row, each CTA holding a slice of the row: 16 CTAs (a
// non-portable cluster) while every row's cluster fits one wave on the device, else the largest
// power of two <= 8 that does. Histograms and reductions are summed over the cluster through
// distributed shared memory in rank order, so every CTA takes the same decisions. The first
// pass (the arg-max) also keeps the slice's keys (an order-preserving 32-bit key of each logit)
// in shared memory when the slice fits (up to 19,456 logits: vocab 151,936 in 8 slices), so
// the later passes do not reload the logits.
//
// Cuts are found by radix levels over the key, 8 bits a level, with 256-bin histograms (counts
// for the top-k cut; fp64 weight sums for the top-p cut and the inverse CDF). A level whose bin
// holds at most 4,096 candidates ends the search: the bin's candidates are gathered into the
// first CTA as (key, id) pairs, sorted there (a bitonic network, (key desc, id asc)), and their
// weights summed in that order, which gives the element and its id. When the top-k cut stops at
// the row's first bin, that one gathered set also cuts the nucleus and draws; when the
// candidates left after a cut number at most 4,096, they are gathered whole. Otherwise the next
// level narrows the bin, and a cut inside a group of equal logits (equal weights) is resolved by
// arithmetic and the id by an ordered block scan in the CTA whose slice holds it. Greedy rows
// (temperature 0 or top_k 1) take the arg-max pass only; a launch whose rows are all greedy
// (no weights workspace) runs a smaller arg-max kernel.
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
  // Workspace fp32 [num_rows][vocab] (the rows' weights where a row's slice of the logits does
  // not fit in shared memory). Null only when every row is greedy: a smaller arg-max kernel
  // runs then.
  float* weights = nullptr;
  int32_t* tokens = nullptr;  // out [num_rows]
};

// tokens[i] = the token of logits row specs[i].row under specs[i]. Device pointers; enqueues on
// `stream` without synchronising. Parameters are the caller's to validate (SamplingParams).
absl::Status SampleRowsCuda(const SampleRowsParams& p, cudaStream_t stream);

}  // namespace resa::cuda
