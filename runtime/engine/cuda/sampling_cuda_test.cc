// SampleRowsCuda against its CPU twin, resa::SampleWithUniform, over vocab sizes (2 to 262,144,
// the exact 151,936 included; 4096 and 4097 on either side of the kernel's gathered-set
// capacity), logit distributions (normal, one-hot, heavy-tailed with bf16
// ties, all equal, normal with NaN and -inf) and parameter sets (greedy, temperature 0.1-2,
// top_k 0/1/40/large/over vocab, top_p 1/0.9/0.5/tiny), 64 rows per launch.
//
// Greedy must match exactly. Sampled tokens must match except where the twin's own cut is
// within kTol * total of a cumulative boundary: the kernel sums the same fp32 weights in fp64
// in another order, so a boundary that close may fall on either side.
#include "runtime/engine/cuda/sampling_cuda.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/cuda_test_util.h"
#include "runtime/engine/cuda/model_ops_ref.h"
#include "runtime/engine/sampler.h"

namespace resa::cuda {
namespace {

constexpr double kTol = 1e-9;  // relative to the total weight

std::vector<int32_t> RunKernel(const std::vector<float>& logits, int vocab,
                               const std::vector<SampleRowSpec>& specs) {
  testing::DeviceBuffer<float> dl(logits);
  testing::DeviceBuffer<SampleRowSpec> ds(specs);
  testing::DeviceBuffer<float> dw(specs.size() * size_t(vocab));
  testing::DeviceBuffer<int32_t> dt(specs.size());
  SampleRowsParams p;
  p.logits = dl.get();
  p.vocab = vocab;
  p.specs = ds.get();
  p.num_rows = int(specs.size());
  p.weights = dw.get();
  p.tokens = dt.get();
  const absl::Status st = SampleRowsCuda(p, nullptr);
  EXPECT_TRUE(st.ok()) << st;
  return dt.Download();
}

// Why the twin's token may differ from the kernel's `got`: the positions (in the twin's order)
// between the two are all separated by cumulative boundaries within kTol of the draw, or the
// top-p cut itself is within kTol. False when the difference is not explained.
bool NearBoundary(const float* logits, int vocab, const SamplingParams& p, double u,
                  int32_t want, int32_t got) {
  std::vector<std::pair<float, int32_t>> c(static_cast<size_t>(vocab));
  for (int i = 0; i < vocab; ++i) {
    c[size_t(i)] = {std::isnan(logits[i]) ? -INFINITY : logits[i], i};
  }
  std::sort(c.begin(), c.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  size_t n = p.top_k > 0 && p.top_k < vocab ? size_t(p.top_k) : c.size();
  const float mx = c[0].first;
  std::vector<double> incl(n);
  double total = 0.0;
  for (size_t i = 0; i < n; ++i) {
    total += float(std::exp(double(c[i].first - mx) / p.temperature));
    incl[i] = total;
  }
  size_t keep = n;
  if (p.top_p < 1.0f) {
    const double cut = double(p.top_p) * total;
    keep = size_t(std::lower_bound(incl.begin(), incl.end(), cut) - incl.begin()) + 1;
    keep = std::min(keep, n);
    for (size_t i = keep >= 2 ? keep - 2 : 0; i < keep; ++i) {
      if (std::fabs(incl[i] - cut) <= kTol * total) return true;  // the cut itself is ambiguous
    }
    total = incl[keep - 1];
  }
  size_t pw = c.size(), pg = c.size();
  for (size_t i = 0; i < c.size(); ++i) {
    if (c[i].second == want) pw = i;
    if (c[i].second == got) pg = i;
  }
  if (pg >= keep) return false;
  const double x = u * total;
  for (size_t i = std::min(pw, pg); i < std::max(pw, pg); ++i) {
    if (std::fabs(incl[i] - x) > kTol * total) return false;
  }
  return true;
}

std::vector<float> Distribution(const std::string& kind, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<float> l(static_cast<size_t>(vocab));
  if (kind == "normal" || kind == "nan") {
    std::normal_distribution<float> d(0.0f, 3.0f);
    for (float& x : l) x = d(rng);
    if (kind == "nan") {
      for (int i = 0; i < vocab; i += 7) l[size_t(i)] = std::numeric_limits<float>::quiet_NaN();
      for (int i = 3; i < vocab; i += 11) l[size_t(i)] = -INFINITY;
    }
  } else if (kind == "onehot") {
    std::fill(l.begin(), l.end(), -10.0f);
    l[size_t(vocab / 3)] = 10.0f;
  } else if (kind == "heavy") {
    // Cauchy logits rounded to bf16: a long tail and many exact ties.
    std::uniform_real_distribution<double> u(0.0, 1.0);
    for (float& x : l) {
      x = ref::RoundBf16(float(std::clamp(std::tan(M_PI * (u(rng) - 0.5)), -40.0, 40.0)));
    }
  } else {
    std::fill(l.begin(), l.end(), 0.5f);
  }
  return l;
}

class SampleRowsTest
    : public testing::CudaTest,
      public ::testing::WithParamInterface<std::tuple<int, std::string>> {};

TEST_P(SampleRowsTest, MatchesTheCpuTwin) {
  const int vocab = std::get<0>(GetParam());
  const std::string kind = std::get<1>(GetParam());
  constexpr int kLogitRows = 4, kRows = 64;
  std::vector<float> logits;
  for (int r = 0; r < kLogitRows; ++r) {
    const std::vector<float> row = Distribution(kind, vocab, uint64_t(r) * 977 + vocab);
    logits.insert(logits.end(), row.begin(), row.end());
  }
  const int large = std::max(2, vocab / 2);
  const SamplingParams sets[] = {
      {0.0f, 0, 1.0f, 0},     {1.0f, 0, 1.0f, 0},     {0.7f, 40, 0.9f, 0},
      {1.3f, large, 0.5f, 0}, {0.1f, 0, 1e-6f, 0},    {2.0f, 0, 0.9f, 0},
      {1.0f, 1, 1.0f, 0},     {0.5f, vocab + 5, 1.0f, 0}, {1.0f, 40, 1.0f, 0},
      {0.9f, 0, 0.5f, 0}};
  std::mt19937_64 rng(vocab * 31 + kind.size());
  int total = 0, mismatches = 0, explained = 0;
  for (const SamplingParams& p : sets) {
    std::vector<SampleRowSpec> specs(kRows);
    for (int i = 0; i < kRows; ++i) {
      double u = std::generate_canonical<double, 53>(rng);
      if (i == 0) u = 0.0;
      if (i == 1) u = std::nextafter(1.0, 0.0);
      specs[size_t(i)] = SampleRowSpec{i % kLogitRows, p.temperature, p.top_k, p.top_p, u};
    }
    // One launch of all 64 rows (clusters of 2 CTAs: slices too large for shared memory at the
    // large vocabularies), then the first 8 rows as one launch (8- or 16-CTA clusters) and the
    // next 4 one row a launch (16-CTA clusters): the kernel's other cluster sizes and its
    // shared-memory slice cache.
    const std::vector<int32_t> got = RunKernel(logits, vocab, specs);
    const std::vector<int32_t> first8 =
        RunKernel(logits, vocab, std::vector<SampleRowSpec>(specs.begin(), specs.begin() + 8));
    std::vector<int32_t> single(4);
    for (int i = 0; i < 4; ++i) {
      single[size_t(i)] = RunKernel(logits, vocab, {specs[size_t(8 + i)]})[0];
    }
    std::vector<std::pair<int, int32_t>> checks;  // (spec, token)
    for (int i = 0; i < kRows; ++i) checks.emplace_back(i, got[size_t(i)]);
    for (int i = 0; i < 8; ++i) checks.emplace_back(i, first8[size_t(i)]);
    for (int i = 0; i < 4; ++i) checks.emplace_back(8 + i, single[size_t(i)]);
    std::vector<int32_t> twin(kRows);
#pragma omp parallel for schedule(dynamic)
    for (int i = 0; i < kRows; ++i) {
      const SampleRowSpec& s = specs[size_t(i)];
      twin[size_t(i)] = SampleWithUniform(logits.data() + size_t(s.row) * vocab, vocab, p, s.u);
    }
    for (const auto& [i, token] : checks) {
      const SampleRowSpec& s = specs[size_t(i)];
      const float* row = logits.data() + size_t(s.row) * vocab;
      const int32_t want = twin[size_t(i)];
      ++total;
      if (token == want) continue;
      ++mismatches;
      const bool greedy = p.temperature == 0.0f || p.top_k == 1;
      const bool ok = !greedy && NearBoundary(row, vocab, p, s.u, want, token);
      explained += ok;
      EXPECT_TRUE(ok) << "row " << i << " u " << s.u << " temperature " << p.temperature
                      << " top_k " << p.top_k << " top_p " << p.top_p << ": kernel " << token
                      << ", twin " << want;
    }
  }
  std::printf("[sampling] vocab %d %s: %d rows, %d differ from the twin (%d within %.0e of a "
              "cut)\n",
              vocab, kind.c_str(), total, mismatches, explained, kTol);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, SampleRowsTest,
    ::testing::Combine(::testing::Values(2, 17, 1000, 4096, 4097, 151936, 262144),
                       ::testing::Values("normal", "onehot", "heavy", "equal", "nan")),
    [](const auto& info) {
      return std::to_string(std::get<0>(info.param)) + "_" + std::get<1>(info.param);
    });

// Frequencies over many independent draws follow the (truncated) softmax: within 5 sigma.
class SampleRowsStats : public testing::CudaTest {};

TEST_F(SampleRowsStats, FrequenciesFollowTheSoftmax) {
  const std::vector<float> logits = {0.0f, 1.0f, 2.0f, -1.0f, 0.5f, 3.0f};
  const int vocab = 6, rows = 60000;
  struct Case {
    SamplingParams p;
  };
  for (const SamplingParams& p : {SamplingParams{0.8f, 0, 1.0f, 0},
                                  SamplingParams{1.5f, 3, 1.0f, 0},
                                  SamplingParams{1.0f, 0, 0.8f, 0}}) {
    // Expected: softmax at temperature over the top_k, cut to the top_p nucleus, renormalised.
    std::vector<int> order = {5, 2, 1, 4, 0, 3};
    const size_t k = p.top_k > 0 ? size_t(p.top_k) : order.size();
    std::vector<double> w(k);
    double total = 0.0;
    for (size_t i = 0; i < k; ++i) total += w[i] = std::exp((logits[order[i]] - 3.0) / p.temperature);
    size_t keep = k;
    if (p.top_p < 1.0f) {
      double mass = 0.0;
      for (keep = 0; keep < k;) {
        mass += w[keep++] / total;
        if (mass >= p.top_p) break;
      }
      total = 0.0;
      for (size_t i = 0; i < keep; ++i) total += w[i];
    }
    std::vector<double> expect(vocab, 0.0);
    for (size_t i = 0; i < keep; ++i) expect[size_t(order[i])] = w[i] / total;

    std::mt19937_64 rng(17);
    std::vector<SampleRowSpec> specs(rows);
    std::vector<float> all;
    for (int i = 0; i < rows; ++i) {
      specs[size_t(i)] = SampleRowSpec{0, p.temperature, p.top_k, p.top_p,
                                       std::generate_canonical<double, 53>(rng)};
    }
    const std::vector<int32_t> got = RunKernel(logits, vocab, specs);
    std::vector<int> count(vocab, 0);
    for (int32_t t : got) {
      ASSERT_GE(t, 0);
      ASSERT_LT(t, vocab);
      count[size_t(t)]++;
    }
    double worst_sigma = 0.0;
    for (int v = 0; v < vocab; ++v) {
      const double f = double(count[size_t(v)]) / rows;
      const double sigma = std::sqrt(std::max(expect[size_t(v)] * (1 - expect[size_t(v)]), 1e-12) / rows);
      if (expect[size_t(v)] == 0.0) {
        EXPECT_EQ(count[size_t(v)], 0) << "token " << v << " is outside top-k / top-p";
        continue;
      }
      worst_sigma = std::max(worst_sigma, std::fabs(f - expect[size_t(v)]) / sigma);
      EXPECT_LE(std::fabs(f - expect[size_t(v)]), 5 * sigma)
          << "token " << v << " frequency " << f << " expected " << expect[size_t(v)];
    }
    std::printf("[sampling-stats] temperature %.1f top_k %d top_p %.2f: %d draws, worst |f - p| "
                "= %.2f sigma\n",
                p.temperature, p.top_k, p.top_p, rows, worst_sigma);
  }
}

}  // namespace
}  // namespace resa::cuda

namespace resa::cuda {
namespace {

// Not a check: device time per launch at the R1-Distill vocab, printed for the docs.
class SampleRowsTiming : public testing::CudaTest {};

TEST_F(SampleRowsTiming, PrintsMicrosecondsPerLaunch) {
  const int vocab = 151936;
  for (int rows : {1, 8, 64}) {
    std::vector<float> logits;
    for (int r = 0; r < rows; ++r) {
      const std::vector<float> row = Distribution("normal", vocab, uint64_t(r) + 1);
      logits.insert(logits.end(), row.begin(), row.end());
    }
    testing::DeviceBuffer<float> dl(logits);
    testing::DeviceBuffer<float> dw(size_t(rows) * vocab);
    testing::DeviceBuffer<int32_t> dt(static_cast<size_t>(rows));
    for (const SamplingParams& p : {SamplingParams{0.0f, 0, 1.0f, 0},
                                    SamplingParams{0.7f, 40, 0.9f, 0},
                                    SamplingParams{1.0f, 0, 0.9f, 0},
                                    SamplingParams{1.0f, 0, 1.0f, 0}}) {
      std::vector<SampleRowSpec> specs(static_cast<size_t>(rows));
      for (int r = 0; r < rows; ++r) {
        specs[size_t(r)] = SampleRowSpec{r, p.temperature, p.top_k, p.top_p, 0.37};
      }
      testing::DeviceBuffer<SampleRowSpec> ds(specs);
      SampleRowsParams sp;
      sp.logits = dl.get();
      sp.vocab = vocab;
      sp.specs = ds.get();
      sp.num_rows = rows;
      // Greedy rows as CudaModel samples them: no weights workspace, the arg-max kernel.
      sp.weights = p.temperature == 0.0f ? nullptr : dw.get();
      sp.tokens = dt.get();
      cudaEvent_t a, b;
      cudaEventCreate(&a);
      cudaEventCreate(&b);
      ASSERT_TRUE(SampleRowsCuda(sp, nullptr).ok());  // warm-up
      const int iters = 20;
      cudaEventRecord(a);
      for (int i = 0; i < iters; ++i) ASSERT_TRUE(SampleRowsCuda(sp, nullptr).ok());
      cudaEventRecord(b);
      cudaEventSynchronize(b);
      float ms = 0.0f;
      cudaEventElapsedTime(&ms, a, b);
      cudaEventDestroy(a);
      cudaEventDestroy(b);
      std::printf("[sampling-time] vocab %d rows %d temperature %.1f top_k %d top_p %.1f: %.1f us "
                  "per launch\n",
                  vocab, rows, p.temperature, p.top_k, p.top_p, 1e3 * ms / iters);
    }
  }
}

}  // namespace
}  // namespace resa::cuda
