#include "runtime/engine/sampler.h"

#include <algorithm>
#include <cmath>

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
  int32_t best = 0;
  for (int i = 1; i < n; ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return best;
}

int32_t Sampler::Sample(const float* logits, int vocab_size) {
  if (p_.temperature == 0.0f) return ArgMax(logits, vocab_size);
  cand_.resize(vocab_size);
  for (int i = 0; i < vocab_size; ++i) cand_[i] = {logits[i], i};
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t n = cand_.size();
  if (p_.top_k > 0 && size_t(p_.top_k) < n) {
    n = size_t(p_.top_k);
    std::partial_sort(cand_.begin(), cand_.begin() + n, cand_.end(), by_logit);
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  // Softmax at temperature over the candidates (sorted, so the max is first).
  const float mx = cand_[0].first;
  double total = 0.0;
  for (size_t i = 0; i < n; ++i) {
    cand_[i].first = float(std::exp(double(cand_[i].first - mx) / p_.temperature));
    total += cand_[i].first;
  }
  if (p_.top_p < 1.0f) {
    // Keep the smallest prefix whose mass reaches top_p (always at least one token).
    double mass = 0.0;
    size_t keep = 0;
    while (keep < n) {
      mass += cand_[keep].first / total;
      ++keep;
      if (mass >= p_.top_p) break;
    }
    n = keep;
    total = 0.0;
    for (size_t i = 0; i < n; ++i) total += cand_[i].first;
  }
  std::uniform_real_distribution<double> u(0.0, total);
  double x = u(rng_);
  for (size_t i = 0; i < n; ++i) {
    x -= cand_[i].first;
    if (x <= 0.0) return cand_[i].second;
  }
  return cand_[n - 1].second;
}

}  // namespace resa
