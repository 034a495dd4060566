// The sampling rule split into Sampler::Draw + SampleWithUniform (the CPU twin of the CUDA
// sampler), and backend sampling through Generate.
#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/engine/generate.h"
#include "runtime/engine/sampler.h"
#include "runtime/engine/synthetic_model.h"

namespace resa {
namespace {

// The host sampler as it was before the split (uniform_real_distribution(0, total)): the token
// streams of the refactored Sampler must equal it draw for draw.
class LegacySampler {
 public:
  explicit LegacySampler(const SamplingParams& p) : p_(p), rng_(p.seed) {}
  int32_t Sample(const float* logits, int vocab) {
    if (p_.temperature == 0.0f) return ArgMax(logits, vocab);
    std::vector<std::pair<float, int32_t>> cand(static_cast<size_t>(vocab));
    for (int i = 0; i < vocab; ++i) cand[size_t(i)] = {logits[i], i};
    auto by_logit = [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    };
    size_t n = cand.size();
    if (p_.top_k > 0 && size_t(p_.top_k) < n) {
      n = size_t(p_.top_k);
      std::partial_sort(cand.begin(), cand.begin() + ptrdiff_t(n), cand.end(), by_logit);
    } else {
      std::sort(cand.begin(), cand.end(), by_logit);
    }
    const float mx = cand[0].first;
    double total = 0.0;
    for (size_t i = 0; i < n; ++i) {
      cand[i].first = float(std::exp(double(cand[i].first - mx) / p_.temperature));
      total += cand[i].first;
    }
    if (p_.top_p < 1.0f) {
      double mass = 0.0;
      size_t keep = 0;
      while (keep < n) {
        mass += cand[keep].first / total;
        ++keep;
        if (mass >= p_.top_p) break;
      }
      n = keep;
      total = 0.0;
      for (size_t i = 0; i < n; ++i) total += cand[i].first;
    }
    std::uniform_real_distribution<double> u(0.0, total);
    double x = u(rng_);
    for (size_t i = 0; i < n; ++i) {
      x -= cand[i].first;
      if (x <= 0.0) return cand[i].second;
    }
    return cand[n - 1].second;
  }

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
};

std::vector<float> RandomLogits(int vocab, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> l(static_cast<size_t>(vocab));
  for (float& x : l) x = d(rng);
  return l;
}

TEST(SamplingRule, StreamsEqualTheLegacySamplerDrawForDraw) {
  const SamplingParams cases[] = {{0.0f, 0, 1.0f, 1},   {1.0f, 0, 1.0f, 2},  {0.7f, 40, 0.9f, 3},
                                  {1.3f, 0, 0.5f, 4},   {0.1f, 5, 1.0f, 5},  {2.0f, 1, 1.0f, 6},
                                  {1.0f, 0, 1e-6f, 7},  {1.0f, 900, 0.95f, 8}};
  for (const SamplingParams& p : cases) {
    Sampler now(p);
    LegacySampler before(p);
    for (int i = 0; i < 300; ++i) {
      const std::vector<float> l = RandomLogits(1000, uint64_t(i) * 7 + p.seed, 2.0f);
      ASSERT_EQ(now.Sample(l.data(), 1000), before.Sample(l.data(), 1000))
          << "draw " << i << " temperature " << p.temperature << " top_k " << p.top_k
          << " top_p " << p.top_p;
    }
  }
}

TEST(SamplingRule, SampleIsDrawThenTheRule) {
  const SamplingParams p{0.8f, 40, 0.9f, 11};
  Sampler a(p), b(p);
  for (int i = 0; i < 200; ++i) {
    const std::vector<float> l = RandomLogits(500, uint64_t(i), 3.0f);
    const RowSampling r = b.Next(3);
    EXPECT_EQ(r.row, 3);
    EXPECT_GE(r.u, 0.0);
    EXPECT_LT(r.u, 1.0);
    EXPECT_EQ(a.Sample(l.data(), 500), SampleWithUniform(l.data(), 500, r.params, r.u));
  }
}

TEST(SamplingRule, GreedyDrawsNothing) {
  Sampler g(SamplingParams{0.0f, 0, 1.0f, 9});
  for (int i = 0; i < 10; ++i) EXPECT_EQ(g.Draw(), 0.0);
}

TEST(SamplingRule, InverseCdfKnownAnswers) {
  // probs 0.5, 0.3, 0.2 (ids 2, 0, 1 by logit).
  const std::vector<float> l = {std::log(0.3f), std::log(0.2f), std::log(0.5f)};
  const SamplingParams t1{1.0f, 0, 1.0f, 0};
  EXPECT_EQ(SampleWithUniform(l.data(), 3, t1, 0.0), 2);
  EXPECT_EQ(SampleWithUniform(l.data(), 3, t1, 0.49), 2);
  EXPECT_EQ(SampleWithUniform(l.data(), 3, t1, 0.51), 0);
  EXPECT_EQ(SampleWithUniform(l.data(), 3, t1, 0.81), 1);
  EXPECT_EQ(SampleWithUniform(l.data(), 3, t1, 0.9999999), 1);
  // top_k 2: {2, 0} renormalised to 5/8, 3/8.
  const SamplingParams k2{1.0f, 2, 1.0f, 0};
  EXPECT_EQ(SampleWithUniform(l.data(), 3, k2, 0.6), 2);
  EXPECT_EQ(SampleWithUniform(l.data(), 3, k2, 0.65), 0);
  EXPECT_EQ(SampleWithUniform(l.data(), 3, k2, 0.9999999), 0);
  // top_p 0.7 keeps {2, 0}; 0.45 keeps {2} alone.
  EXPECT_EQ(SampleWithUniform(l.data(), 3, SamplingParams{1.0f, 0, 0.7f, 0}, 0.9999), 0);
  EXPECT_EQ(SampleWithUniform(l.data(), 3, SamplingParams{1.0f, 0, 0.45f, 0}, 0.9999), 2);
  // Equal logits: ids in order, u * n picks id floor(u * n).
  const std::vector<float> eq(8, 1.25f);
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(SampleWithUniform(eq.data(), 8, t1, (i + 0.5) / 8.0), i);
  }
}

TEST(SamplingRule, NanNeverWins) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> a = {nan, 1.0f, nan, 0.5f};
  EXPECT_EQ(ArgMax(a.data(), 4), 1);
  const std::vector<float> b = {nan, nan};
  EXPECT_EQ(ArgMax(b.data(), 2), 0);
  const std::vector<float> c = {nan, -inf, -inf};
  EXPECT_EQ(ArgMax(c.data(), 3), 1);
  const SamplingParams t{1.0f, 0, 1.0f, 0};
  for (double u : {0.0, 0.3, 0.7, 0.999}) {
    const int32_t s = SampleWithUniform(a.data(), 4, t, u);
    EXPECT_TRUE(s == 1 || s == 3) << s;
  }
  EXPECT_EQ(SampleWithUniform(c.data(), 3, t, 0.5), 1);  // no finite logit: the arg-max
}

// Generate samples through the backend (ModelBackend::Sample) by default: on the CPU backend
// the same tokens as the host Sampler, greedy and seeded, through ReSA rectifications.
TEST(SamplingRule, BackendSamplingInGenerateEqualsHostSampling) {
  auto cfg = SyntheticConfig("tiny");
  ASSERT_TRUE(cfg.ok());
  auto source = MakeSyntheticWeights(*cfg, 5);
  auto weights = LoadCpuWeights(*source);
  ASSERT_TRUE(weights.ok()) << weights.status();
  auto cache = std::move(KvCache::Create((*weights)->config, 64).value());
  CpuModel model(**weights, *cache);
  std::vector<int32_t> prompt(100);
  for (int i = 0; i < 100; ++i) prompt[size_t(i)] = (i * 37 + 3) % (*weights)->config.vocab_size;
  for (const SamplingParams& sp : {SamplingParams{0.0f, 0, 1.0f, 0},
                                   SamplingParams{0.9f, 20, 0.9f, 42}}) {
    std::vector<int32_t> got[2];
    for (int host = 0; host < 2; ++host) {
      GenerateOptions o;
      o.max_new_tokens = 24;
      o.sampling = sp;
      o.resa = ResaOptions{DecodeMode::kResa, 0.25f, 2, 4};
      o.host_sampling = host == 1;
      auto st = Generate(model, *cache, prompt, o, [&](int32_t t) {
        got[host].push_back(t);
        return true;
      });
      ASSERT_TRUE(st.ok()) << st.status();
      EXPECT_GT(st->report.rectifications, 0);
    }
    EXPECT_EQ(got[0], got[1]) << "temperature " << sp.temperature;
    EXPECT_EQ(got[0].size(), 24u);
  }
}

TEST(SamplingRule, BackendSampleChecksRows) {
  auto cfg = SyntheticConfig("tiny");
  auto source = MakeSyntheticWeights(*cfg, 5);
  auto weights = LoadCpuWeights(*source);
  ASSERT_TRUE(weights.ok());
  auto cache = std::move(KvCache::Create((*weights)->config, 16).value());
  CpuModel model(**weights, *cache);
  CpuBackend backend(model, *cache);
  int32_t token = -1;
  RowSampling r;
  EXPECT_TRUE(absl::IsInvalidArgument(backend.Sample({&r, 1}, &token)));  // no forward yet
  SequenceKv kv;
  const std::vector<int32_t> prompt = {1, 2, 3};
  ForwardChunk ch{&kv, prompt, LogitsMode::kLast};
  ASSERT_TRUE(backend.Forward({&ch, 1}, nullptr).ok());
  ASSERT_TRUE(backend.Sample({&r, 1}, &token).ok());
  EXPECT_GE(token, 0);
  r.row = 1;
  EXPECT_TRUE(absl::IsInvalidArgument(backend.Sample({&r, 1}, &token)));
  r.row = 0;
  r.params.top_p = 0.0f;
  EXPECT_TRUE(absl::IsInvalidArgument(backend.Sample({&r, 1}, &token)));
  backend.Release(kv);
}

}  // namespace
}  // namespace resa
