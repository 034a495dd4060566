#include "runtime/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace resa {

absl::Status SamplingParams::Validate() const {
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--temperature must be a finite number >= 0, got ", temperature));
  }
  if (top_k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--top-k must be >= 0, got ", top_k));
  }
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("--top-p must be in (0, 1], got ", top_p));
  }
  return absl::OkStatus();
}

int32_t ArgMax(const float* logits, int n) {
  int32_t best = -1;
  for (int i = 0; i < n; ++i) {
    if (std::isnan(logits[i])) continue;
    if (best < 0 || logits[i] > logits[best]) best = i;
  }
  return best < 0 ? 0 : best;
}

int32_t SampleWithUniform(const float* logits, int vocab, const SamplingParams& p, double u,
                          std::vector<std::pair<float, int32_t>>* scratch) {
  if (p.temperature == 0.0f) return ArgMax(logits, vocab);
  std::vector<std::pair<float, int32_t>> local;
  std::vector<std::pair<float, int32_t>>& cand = scratch != nullptr ? *scratch : local;
  cand.resize(size_t(vocab));
  for (int i = 0; i < vocab; ++i) {
    cand[size_t(i)] = {std::isnan(logits[i]) ? -std::numeric_limits<float>::infinity() : logits[i],
                       i};
  }
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t n = cand.size();
  if (p.top_k > 0 && size_t(p.top_k) < n) {
    n = size_t(p.top_k);
    std::partial_sort(cand.begin(), cand.begin() + ptrdiff_t(n), cand.end(), by_logit);
  } else {
    std::sort(cand.begin(), cand.end(), by_logit);
  }
  // Softmax at temperature over the candidates (sorted, so the max is first).
  const float mx = cand[0].first;
  if (!std::isfinite(mx)) return ArgMax(logits, vocab);  // as the CUDA kernel
  double total = 0.0;
  for (size_t i = 0; i < n; ++i) {
    cand[i].first = float(std::exp(double(cand[i].first - mx) / p.temperature));
    total += cand[i].first;
  }
  if (p.top_p < 1.0f) {
    // Keep the smallest prefix whose mass reaches top_p (always at least one token).
    double mass = 0.0;
    size_t keep = 0;
    while (keep < n) {
      mass += cand[keep].first / total;
      ++keep;
      if (mass >= p.top_p) break;
    }
    n = keep;
    total = 0.0;
    for (size_t i = 0; i < n; ++i) total += cand[i].first;
  }
  // Inverse CDF. x = u * total is exactly what std::uniform_real_distribution<double>(0, total)
  // returns for the canonical u, which keeps the host token streams of earlier releases.
  double x = u * total;
  for (size_t i = 0; i < n; ++i) {
    x -= cand[i].first;
    if (x <= 0.0) return cand[i].second;
  }
  return cand[n - 1].second;
}

double Sampler::Draw() {
  if (p_.temperature == 0.0f) return 0.0;
  return std::generate_canonical<double, std::numeric_limits<double>::digits>(rng_);
}

int32_t Sampler::Sample(const float* logits, int vocab_size) {
  const double u = Draw();
  return SampleWithUniform(logits, vocab_size, p_, u, &cand_);
}

}  // namespace resa
