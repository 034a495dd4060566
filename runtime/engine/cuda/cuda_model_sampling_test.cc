// Sampling through the CUDA model: Generate's device sampling against the host Sampler, the
// greedy ids a forward takes itself (the arg-max kernel after the lm_head, and one row's lm_head
// GEMV arg-max), and batch Sample calls against the host rule on the downloaded logits.
#include <cstdio>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/engine/cuda/cuda_model.h"
#include "runtime/engine/cuda/cuda_model_test_util.h"
#include "runtime/engine/decoder.h"
#include "runtime/engine/generate.h"
#include "runtime/engine/sampler.h"

namespace resa::cuda {
namespace {

using model_test::CudaModelInvariants;

// Generate samples on the device by default (ModelBackend::Sample: only the ids come back); it
// gives the host Sampler's tokens on the same backend, greedy and seeded, dense and through
// ReSA rectifications (forwards without logits between a step and its sample), with graphs.
TEST_F(CudaModelInvariants, DeviceSamplingInGenerateEqualsHostSampling) {
  auto m = Model(true);
  const int vocab = m->config().vocab_size;
  std::vector<int32_t> prompt(300);
  for (int i = 0; i < 300; ++i) prompt[size_t(i)] = (i * 29 + 1) % vocab;
  int compared = 0;
  for (DecodeMode mode : {DecodeMode::kDense, DecodeMode::kResa}) {
    for (const SamplingParams& sp :
         {SamplingParams{0.0f, 0, 1.0f, 0}, SamplingParams{0.8f, 40, 0.9f, 5},
          SamplingParams{1.2f, 0, 1.0f, 6}}) {
      std::vector<int32_t> got[2];
      for (int host = 0; host < 2; ++host) {
        GenerateOptions o;
        o.max_new_tokens = 40;
        o.sampling = sp;
        o.resa = ResaOptions{mode, 0.25f, 4, 8};
        o.host_sampling = host == 1;
        auto st = Generate(*m, prompt, o, [&](int32_t t) {
          got[host].push_back(t);
          return true;
        });
        ASSERT_TRUE(st.ok()) << st.status();
        if (mode == DecodeMode::kResa) {
          EXPECT_GT(st->report.rectifications, 0);
        }
      }
      EXPECT_EQ(got[0], got[1]) << DecodeModeName(mode) << " temperature " << sp.temperature;
      EXPECT_EQ(got[0].size(), 40u);
      compared += int(got[0].size());
    }
  }
  EXPECT_GT(m->graphs_captured(), 0);
  std::printf("[device-sampling] Generate: %d tokens compared, device == host\n", compared);
}

// Greedy rows sampled after a forward that took their arg-max itself (Plan::greedy: on while the
// last Sample call was all greedy) read those ids. They equal the host arg-max of the step's
// logits, through graphs and rectifications, with mixed and partial Sample calls in between
// (a mixed call launches the sampler and turns the forward's arg-max off for the next step).
// Three sequences (the arg-max kernel after the lm_head) and one (Plan::greedy_key: the lm_head
// GEMV's own arg-max).
TEST_F(CudaModelInvariants, GreedyIdsFromTheForwardEqualTheHostArgMax) {
  auto m = Model(true);
  const int vocab = m->config().vocab_size;
  const ResaOptions modes[] = {{DecodeMode::kDense, 0.1f, 16, 32},
                               {DecodeMode::kSparse, 0.25f, 4, 8},
                               {DecodeMode::kResa, 0.25f, 4, 8}};
  const SamplingParams greedy{0.0f, 0, 1.0f, 0}, hot{0.8f, 40, 0.9f, 1};
  for (const int nseq : {3, 1}) {
    SCOPED_TRACE(::testing::Message() << nseq << " sequences");
    const int64_t from_forward = m->greedy_samples_from_forward();
    Decoder dec(*m);
    std::vector<int> ids;
    for (int s = 0; s < nseq; ++s) {
      const int mode = nseq == 1 ? 2 : s;  // one sequence: ReSA (rectifications in the loop)
      std::vector<int32_t> prompt(100 + 150 * mode);
      for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = int32_t((i * 19 + s) % vocab);
      ids.push_back(dec.Start(prompt, modes[mode]).value());
    }
    std::vector<int32_t> next = {1, 2, 3};
    int checked = 0;
    for (int step = 0; step < 20; ++step) {
      std::vector<Decoder::Feed> feeds;
      for (int s = 0; s < nseq; ++s) feeds.push_back({ids[size_t(s)], next[size_t(s)]});
      ASSERT_TRUE(dec.Step(feeds).ok());  // host logits on: dec.logits() hold the same rows
      std::vector<RowSampling> rows;
      for (int s = 0; s < nseq; ++s) {
        if (step % 5 == 4 && s != 1 && nseq > 1) continue;  // a partial call: row 1 alone
        rows.push_back(RowSampling{s, step % 5 == 2 && s == 0 ? hot : greedy, 0.25});
      }
      std::vector<int32_t> got(rows.size());
      ASSERT_TRUE(m->Sample(rows, got.data()).ok());
      for (size_t j = 0; j < rows.size(); ++j) {
        const int s = rows[j].row;
        const int32_t want = ArgMax(dec.logits(ids[size_t(s)]), vocab);
        if (rows[j].params.temperature == 0.0f) {
          EXPECT_EQ(got[j], want) << "step " << step << " row " << s;
          ++checked;
        }
        next[size_t(s)] = got[j];
      }
    }
    EXPECT_GT(checked, nseq == 1 ? 15 : 40);
    EXPECT_GE(m->greedy_samples_from_forward() - from_forward, nseq == 1 ? 10 : 8);
    EXPECT_GT(dec.report(ids[size_t(nseq - 1)]).rectifications, 0);
  }
}

// A batch caller: one Sampler per sequence, rows in feed order, several parameter sets in one
// Sample call; the ids equal the host rule applied to the downloaded logits.
TEST_F(CudaModelInvariants, BatchSampleMatchesTheHostRule) {
  auto m = Model(true);
  Decoder dec(*m);
  const int vocab = m->config().vocab_size;
  const SamplingParams params[] = {
      {0.0f, 0, 1.0f, 0}, {0.7f, 40, 0.9f, 1}, {1.0f, 0, 0.5f, 2}, {2.0f, 5, 1.0f, 3}};
  std::vector<int> ids;
  std::vector<Sampler> samplers;
  for (int s = 0; s < 4; ++s) {
    std::vector<int32_t> prompt(50 + 40 * s);
    for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = int32_t((i * 13 + s) % vocab);
    ids.push_back(dec.Start(prompt, ResaOptions{DecodeMode::kDense}).value());
    samplers.emplace_back(params[s]);
  }
  std::vector<int32_t> next(4);
  for (int s = 0; s < 4; ++s) next[size_t(s)] = int32_t((s * 7) % vocab);
  for (int step = 0; step < 6; ++step) {
    std::vector<Decoder::Feed> feeds;
    for (int s = 0; s < 4; ++s) feeds.push_back({ids[size_t(s)], next[size_t(s)]});
    ASSERT_TRUE(dec.Step(feeds).ok());  // host logits on: dec.logits() hold the same rows
    std::vector<RowSampling> rows;
    for (int s = 0; s < 4; ++s) rows.push_back(samplers[size_t(s)].Next(s));
    ASSERT_TRUE(m->Sample(rows, next.data()).ok());
    for (int s = 0; s < 4; ++s) {
      EXPECT_EQ(next[size_t(s)], SampleWithUniform(dec.logits(ids[size_t(s)]), vocab,
                                                   rows[size_t(s)].params, rows[size_t(s)].u))
          << "step " << step << " sequence " << s;
    }
  }
  RowSampling bad;
  bad.row = 4;
  int32_t t = 0;
  EXPECT_TRUE(absl::IsInvalidArgument(m->Sample({&bad, 1}, &t)));
}

}  // namespace
}  // namespace resa::cuda
