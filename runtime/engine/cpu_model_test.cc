#include "runtime/engine/cpu_model.h"

#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/selection.h"
#include "kernels/testing/tolerance.h"
#include "runtime/engine/generate.h"
#include "runtime/engine/synthetic_model.h"

namespace resa {
namespace {

class CpuModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto cfg = SyntheticConfig("tiny");
    ASSERT_TRUE(cfg.ok()) << cfg.status();
    source_ = MakeSyntheticWeights(*cfg, 42);
    auto w = LoadCpuWeights(*source_);
    ASSERT_TRUE(w.ok()) << w.status();
    weights_ = std::move(*w);
  }
  std::unique_ptr<KvCache> NewCache(int32_t pages) {
    auto c = KvCache::Create(weights_->config, pages);
    EXPECT_TRUE(c.ok()) << c.status();
    return std::move(*c);
  }
  std::vector<int32_t> Tokens(int n, int salt) {
    std::vector<int32_t> t(n);
    for (int i = 0; i < n; ++i) t[i] = (i * 37 + salt * 11 + 3) % weights_->config.vocab_size;
    return t;
  }
  std::unique_ptr<WeightSource> source_;
  std::unique_ptr<CpuWeights> weights_;
};

// Prefill as one chunk (GEMM + chunk attention) == token by token (GEMV + decode attention).
TEST_F(CpuModelTest, ChunkedPrefillMatchesStepwiseDecode) {
  const int vocab = weights_->config.vocab_size;
  auto tokens = Tokens(45, 1);
  auto cache_a = NewCache(8), cache_b = NewCache(8);
  CpuModel a(*weights_, *cache_a), b(*weights_, *cache_b);
  SequenceKv sa, sb;
  std::vector<float> all(tokens.size() * vocab);
  ForwardChunk chunk{&sa, tokens, LogitsMode::kAll};
  ASSERT_TRUE(a.Forward({&chunk, 1}, all.data()).ok());
  EXPECT_EQ(sa.length, 45);
  std::vector<float> one(vocab);
  for (size_t i = 0; i < tokens.size(); ++i) {
    ForwardChunk step{&sb, {&tokens[i], 1}, LogitsMode::kLast};
    ASSERT_TRUE(b.Forward({&step, 1}, one.data()).ok());
    ASSERT_TRUE(testing::AllClose(one.data(), all.data() + i * vocab, vocab,
                                  testing::Tolerance{2e-4, 2e-4}))
        << "position " << i;
  }
}

// Sequences of different lengths batched in one step == each run alone.
TEST_F(CpuModelTest, RaggedBatchMatchesSeparateRuns) {
  const int vocab = weights_->config.vocab_size;
  auto cache = NewCache(32);
  CpuModel m(*weights_, *cache);
  std::vector<std::vector<int32_t>> prompts = {Tokens(5, 1), Tokens(33, 2), Tokens(16, 3)};
  std::vector<SequenceKv> seqs(3);
  std::vector<float> logits(3 * vocab);
  // Step 1: prefill all three together (chunks of different sizes), logits of the last rows.
  std::vector<ForwardChunk> batch;
  for (int i = 0; i < 3; ++i) batch.push_back({&seqs[i], prompts[i], LogitsMode::kLast});
  ASSERT_TRUE(m.Forward(batch, logits.data()).ok());
  // Step 2: one decode token each, batched.
  std::vector<int32_t> next = {7, 8, 9};
  std::vector<ForwardChunk> step;
  for (int i = 0; i < 3; ++i) step.push_back({&seqs[i], {&next[i], 1}, LogitsMode::kLast});
  std::vector<float> step_logits(3 * vocab);
  ASSERT_TRUE(m.Forward(step, step_logits.data()).ok());

  for (int i = 0; i < 3; ++i) {
    auto solo_cache = NewCache(8);
    CpuModel solo(*weights_, *solo_cache);
    SequenceKv s;
    std::vector<float> l(vocab);
    ForwardChunk c{&s, prompts[i], LogitsMode::kLast};
    ASSERT_TRUE(solo.Forward({&c, 1}, l.data()).ok());
    EXPECT_TRUE(testing::AllClose(logits.data() + i * vocab, l.data(), vocab,
                                  testing::Tolerance{2e-4, 2e-4}));
    ForwardChunk d{&s, {&next[i], 1}, LogitsMode::kLast};
    ASSERT_TRUE(solo.Forward({&d, 1}, l.data()).ok());
    EXPECT_TRUE(testing::AllClose(step_logits.data() + i * vocab, l.data(), vocab,
                                  testing::Tolerance{2e-4, 2e-4}));
  }
}

TEST_F(CpuModelTest, SummariesMatchRecomputationAfterEveryStep) {
  auto cache = NewCache(8);
  CpuModel m(*weights_, *cache);
  SequenceKv s;
  auto tokens = Tokens(40, 4);
  ForwardChunk c{&s, {tokens.data(), 20}, LogitsMode::kNone};
  ASSERT_TRUE(m.Forward({&c, 1}, nullptr).ok());
  const ModelConfig& cfg = weights_->config;
  const size_t sum_elems = size_t(cfg.num_kv_heads) * 2 * cfg.head_dim;
  for (int i = 20; i < 40; ++i) {
    ForwardChunk d{&s, {&tokens[i], 1}, LogitsMode::kNone};
    ASSERT_TRUE(m.Forward({&d, 1}, nullptr).ok());
    for (int l = 0; l < cfg.num_layers; ++l) {
      PagedKvLayer kv = cache->layer(l);
      for (int32_t b = 0; b * kPageTokens < s.length; ++b) {
        const int32_t page = s.page_table[b];
        std::vector<float> got(kv.min_at(page, 0), kv.min_at(page, 0) + sum_elems);
        RecomputeSummary(kv, page, std::min(kPageTokens, s.length - b * kPageTokens));
        std::vector<float> want(kv.min_at(page, 0), kv.min_at(page, 0) + sum_elems);
        ASSERT_EQ(got, want) << "layer " << l << " block " << b << " after " << s.length;
      }
    }
  }
}

// A forward that asks for no logits stops its last layer once the K/V are written; the cache it
// leaves (K, V and summaries of every layer) is bitwise the one a forward with logits leaves, for
// prefill chunks and for a rectification rewrite (of K/V first written from other tokens, so a
// last layer that did not rewrite them would show).
TEST_F(CpuModelTest, ForwardWithoutLogitsWritesTheSameCache) {
  const ModelConfig& cfg = weights_->config;
  auto cache_a = NewCache(8), cache_b = NewCache(8);
  CpuModel a(*weights_, *cache_a), b(*weights_, *cache_b);
  SequenceKv sa, sb;
  auto tokens = Tokens(40, 7), other = Tokens(16, 8);
  std::vector<float> logits(size_t(16) * cfg.vocab_size);
  auto run = [&](std::span<const int32_t> t, int32_t start, LogitsMode with) {
    ForwardChunk ca{&sa, t, LogitsMode::kNone, start}, cb{&sb, t, with, start};
    ASSERT_TRUE(a.Forward({&ca, 1}, nullptr).ok());
    ASSERT_TRUE(b.Forward({&cb, 1}, logits.data()).ok());
  };
  auto same_cache = [&](const char* what) {
    const size_t n = size_t(cache_a->num_pages()) * cache_a->layer(0).page_elems();
    const size_t sum = size_t(cache_a->num_pages()) * cfg.num_kv_heads * 2 * cfg.head_dim;
    for (int l = 0; l < cfg.num_layers; ++l) {
      const PagedKvLayer ka = cache_a->layer(l), kb = cache_b->layer(l);
      EXPECT_EQ(0, std::memcmp(ka.k, kb.k, n * sizeof(float))) << what << ", layer " << l;
      EXPECT_EQ(0, std::memcmp(ka.v, kb.v, n * sizeof(float))) << what << ", layer " << l;
      EXPECT_EQ(0, std::memcmp(ka.summary, kb.summary, sum * sizeof(float)))
          << what << ", layer " << l;
    }
  };
  const std::span<const int32_t> all(tokens);
  ASSERT_NO_FATAL_FAILURE(run(all.subspan(0, 24), -1, LogitsMode::kLast));
  ASSERT_NO_FATAL_FAILURE(run(other, -1, LogitsMode::kAll));
  same_cache("prefill");
  ASSERT_NO_FATAL_FAILURE(run(all.subspan(24), 24, LogitsMode::kLast));  // rewrite [24, 40)
  same_cache("rectification");
  EXPECT_EQ(sa.length, 40);
  std::vector<float> la(cfg.vocab_size), lb(cfg.vocab_size);
  int32_t next = 5;
  ForwardChunk da{&sa, {&next, 1}, LogitsMode::kLast}, db{&sb, {&next, 1}, LogitsMode::kLast};
  ASSERT_TRUE(a.Forward({&da, 1}, la.data()).ok());
  ASSERT_TRUE(b.Forward({&db, 1}, lb.data()).ok());
  EXPECT_EQ(0, std::memcmp(la.data(), lb.data(), la.size() * sizeof(float)));
}

// When every multi-token chunk asks only for its last row's logits, the last layer attends and
// runs the MLP for one row a chunk (and the decode rows). A batch of a decode row and two
// prefill chunks gives, within fp32 rounding, the logits of the same batch with every row's
// logits asked for (the whole last layer), and the same cache bit for bit: the next step's
// logits are equal.
TEST_F(CpuModelTest, LastLayerOnLastRowsMatchesAllRows) {
  const ModelConfig& cfg = weights_->config;
  const int vocab = cfg.vocab_size;
  auto cache_a = NewCache(16), cache_b = NewCache(16);
  CpuModel a(*weights_, *cache_a), b(*weights_, *cache_b);
  SequenceKv sa[3], sb[3];
  const auto p0 = Tokens(17, 1), c1 = Tokens(20, 2), c2 = Tokens(33, 3);
  std::vector<float> la(size_t(1 + 20 + 33) * vocab), lb(size_t(3) * vocab);
  ForwardChunk fa{&sa[0], p0, LogitsMode::kLast}, fb{&sb[0], p0, LogitsMode::kLast};
  ASSERT_TRUE(a.Forward({&fa, 1}, la.data()).ok());
  ASSERT_TRUE(b.Forward({&fb, 1}, lb.data()).ok());
  int32_t next = 9;
  const ForwardChunk ba[] = {{&sa[0], {&next, 1}, LogitsMode::kLast},
                             {&sa[1], c1, LogitsMode::kAll},
                             {&sa[2], c2, LogitsMode::kAll}};
  const ForwardChunk bb[] = {{&sb[0], {&next, 1}, LogitsMode::kLast},
                             {&sb[1], c1, LogitsMode::kLast},
                             {&sb[2], c2, LogitsMode::kLast}};
  ASSERT_TRUE(a.Forward(ba, la.data()).ok());
  ASSERT_TRUE(b.Forward(bb, lb.data()).ok());
  const int64_t rows_a[] = {0, 20, 53};  // the decode row, each chunk's last row
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(::resa::testing::AllClose(lb.data() + size_t(i) * vocab,
                                          la.data() + size_t(rows_a[i]) * vocab, size_t(vocab),
                                          {1e-4, 1e-4}))
        << "logit row " << i;
  }
  const int32_t step[] = {3, 4, 5};
  std::vector<float> na(size_t(3) * vocab), nb(na.size());
  ForwardChunk da[3], db[3];
  for (int i = 0; i < 3; ++i) {
    da[i] = {&sa[i], {&step[i], 1}, LogitsMode::kLast};
    db[i] = {&sb[i], {&step[i], 1}, LogitsMode::kLast};
  }
  ASSERT_TRUE(a.Forward(da, na.data()).ok());
  ASSERT_TRUE(b.Forward(db, nb.data()).ok());
  EXPECT_EQ(0, std::memcmp(na.data(), nb.data(), na.size() * sizeof(float)));
}

TEST_F(CpuModelTest, FullCacheFailsWithoutChangingState) {
  auto cache = NewCache(2);  // 32 positions
  CpuModel m(*weights_, *cache);
  SequenceKv a, b;
  auto t = Tokens(20, 5);
  ForwardChunk c1{&a, t, LogitsMode::kNone};
  ASSERT_TRUE(m.Forward({&c1, 1}, nullptr).ok());
  ForwardChunk c2[] = {{&b, {t.data(), 10}, LogitsMode::kNone}, {&a, t, LogitsMode::kNone}};
  absl::Status st = m.Forward(c2, nullptr);
  EXPECT_TRUE(absl::IsResourceExhausted(st)) << st;
  EXPECT_EQ(a.length, 20);
  EXPECT_EQ(b.length, 0);
  EXPECT_EQ(b.page_table.size(), 0u);
  EXPECT_EQ(cache->free_pages(), 0);
  int32_t bad = 100000;
  ForwardChunk c3{&a, {&bad, 1}, LogitsMode::kNone};
  EXPECT_TRUE(absl::IsInvalidArgument(m.Forward({&c3, 1}, nullptr)));
}

TEST_F(CpuModelTest, GenerateGreedyIsDeterministicAndStopsAtBudgetAndContext) {
  auto prompt = Tokens(10, 6);
  GenerateOptions opt;
  opt.max_new_tokens = 12;
  opt.prefill_chunk = 4;
  std::vector<std::vector<int32_t>> outs(2);
  for (auto& out : outs) {
    auto cache = NewCache(4);
    CpuModel m(*weights_, *cache);
    auto stats = Generate(m, *cache, prompt, opt, [&](int32_t t) {
      out.push_back(t);
      return true;
    });
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_EQ(stats->generated_tokens, 12);
    EXPECT_EQ(stats->prompt_tokens, 10);
  }
  EXPECT_EQ(outs[0], outs[1]);
  auto cache = NewCache(1);  // 16 positions
  CpuModel m(*weights_, *cache);
  opt.max_new_tokens = 100;
  auto stats = Generate(m, *cache, prompt, opt, nullptr);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_TRUE(stats->stopped_by_context);
  EXPECT_EQ(stats->generated_tokens, 7);  // positions 10..15 filled, 7th token never fed back
  auto long_prompt = Tokens(16, 7);
  EXPECT_TRUE(absl::IsInvalidArgument(Generate(m, *cache, long_prompt, opt, nullptr).status()));
}

}  // namespace
}  // namespace resa
