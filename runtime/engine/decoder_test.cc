// ReSA invariants (issue: sparse steps + dense rectification) on a small random-weight model.
#include "runtime/engine/decoder.h"

#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/selection.h"
#include "runtime/engine/synthetic_model.h"

namespace resa {
namespace {

class DecoderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto cfg = SyntheticConfig("tiny");
    ASSERT_TRUE(cfg.ok());
    source_ = MakeSyntheticWeights(*cfg, 7);
    auto w = LoadCpuWeights(*source_);
    ASSERT_TRUE(w.ok()) << w.status();
    weights_ = std::move(*w);
  }
  std::unique_ptr<KvCache> NewCache(int32_t pages = 64) {
    return std::move(KvCache::Create(weights_->config, pages).value());
  }
  std::vector<int32_t> Tokens(int n, int salt) const {
    std::vector<int32_t> t(n);
    for (int i = 0; i < n; ++i) t[i] = (i * 131 + salt * 17 + 5) % weights_->config.vocab_size;
    return t;
  }
  // K and V of positions [from, to) in every layer, flattened.
  std::vector<float> KvOf(KvCache& cache, const SequenceKv& s, int32_t from, int32_t to) const {
    const ModelConfig& c = weights_->config;
    std::vector<float> out;
    for (int l = 0; l < c.num_layers; ++l) {
      PagedKvLayer kv = cache.layer(l);
      for (int32_t p = from; p < to; ++p) {
        for (int h = 0; h < c.num_kv_heads; ++h) {
          const size_t off = size_t(p % kPageTokens) * c.head_dim;
          const float* k = kv.k_at(s.page_table[p / kPageTokens], h) + off;
          const float* v = kv.v_at(s.page_table[p / kPageTokens], h) + off;
          out.insert(out.end(), k, k + c.head_dim);
          out.insert(out.end(), v, v + c.head_dim);
        }
      }
    }
    return out;
  }
  void ExpectSummariesFresh(KvCache& cache, const SequenceKv& s) const {
    const ModelConfig& c = weights_->config;
    const size_t n = size_t(c.num_kv_heads) * 2 * c.head_dim;
    for (int l = 0; l < c.num_layers; ++l) {
      PagedKvLayer kv = cache.layer(l);
      for (int32_t b = 0; b * kPageTokens < s.length; ++b) {
        const int32_t page = s.page_table[b];
        std::vector<float> got(kv.min_at(page, 0), kv.min_at(page, 0) + n);
        RecomputeSummary(kv, page, std::min(kPageTokens, s.length - b * kPageTokens));
        ASSERT_EQ(0, std::memcmp(got.data(), kv.min_at(page, 0), n * sizeof(float)))
            << "layer " << l << " block " << b << " at length " << s.length;
      }
    }
  }
  std::unique_ptr<WeightSource> source_;
  std::unique_ptr<CpuWeights> weights_;
};

// Sparse ratio 1.0 reads every block: logits bitwise equal to dense decoding.
TEST_F(DecoderTest, RatioOneIsBitwiseDense) {
  const int vocab = weights_->config.vocab_size;
  auto prompt = Tokens(300, 1);
  auto feed = Tokens(40, 2);
  auto ca = NewCache(), cb = NewCache();
  CpuModel ma(*weights_, *ca), mb(*weights_, *cb);
  Decoder dense(ma, *ca), ones(mb, *cb);
  const int a = dense.Start(prompt, ResaOptions{.mode = DecodeMode::kDense}, 64).value();
  const int b = ones.Start(prompt, ResaOptions{DecodeMode::kResa, 1.0f, 1, 8}, 64).value();
  for (int32_t t : feed) {
    Decoder::Feed fa{a, t}, fb{b, t};
    ASSERT_TRUE(dense.Step({&fa, 1}).ok());
    ASSERT_TRUE(ones.Step({&fb, 1}).ok());
    ASSERT_EQ(0, std::memcmp(dense.logits(a), ones.logits(b), vocab * sizeof(float)));
  }
  EXPECT_EQ(ones.report(b).rectifications, 0);  // nothing sparse happened, nothing to redo
}

// Contexts of at most n_min blocks select every block: sparse mode == dense, bitwise.
TEST_F(DecoderTest, ShortContextsAreDense) {
  const int vocab = weights_->config.vocab_size;
  auto prompt = Tokens(100, 3);
  auto feed = Tokens(100, 4);  // ends at 200 positions = 13 blocks < 16
  auto ca = NewCache(), cb = NewCache();
  CpuModel ma(*weights_, *ca), mb(*weights_, *cb);
  Decoder dense(ma, *ca), sparse(mb, *cb);
  const int a = dense.Start(prompt, ResaOptions{.mode = DecodeMode::kDense}).value();
  const int b = sparse.Start(prompt, ResaOptions{.mode = DecodeMode::kSparse}).value();
  for (int32_t t : feed) {
    Decoder::Feed fa{a, t}, fb{b, t};
    ASSERT_TRUE(dense.Step({&fa, 1}).ok());
    ASSERT_TRUE(sparse.Step({&fb, 1}).ok());
    ASSERT_EQ(0, std::memcmp(dense.logits(a), sparse.logits(b), vocab * sizeof(float)));
  }
  EXPECT_EQ(sparse.report(b).sparse_steps, 0);
  EXPECT_EQ(sparse.report(b).blocks_read, sparse.report(b).blocks_total);
}

// After each rectification the rectified positions hold exactly (bitwise) the K/V of a dense run
// over the same tokens (the prompt's prefill, then each group of f tokens as one dense chunk);
// the summaries match recomputation after every step.
TEST_F(DecoderTest, RectificationRestoresDenseKvBitwise) {
  const int f = 8, prefill_chunk = 32;
  auto prompt = Tokens(150, 5);
  auto feed = Tokens(3 * f + 3, 6);
  ResaOptions resa{DecodeMode::kResa, 0.2f, 2, f};
  auto cache = NewCache();
  CpuModel model(*weights_, *cache);
  Decoder dec(model, *cache);
  const int id = dec.Start(prompt, resa, prefill_chunk).value();
  const int32_t p = int32_t(prompt.size());

  // Dense reference: same prefill chunks, then each group of f fed tokens as one chunk.
  auto ref_cache = NewCache();
  CpuModel ref(*weights_, *ref_cache);
  SequenceKv rs;
  for (int32_t s = 0; s < p; s += prefill_chunk) {
    ForwardChunk c{&rs, {prompt.data() + s, size_t(std::min(prefill_chunk, p - s))},
                   LogitsMode::kNone};
    ASSERT_TRUE(ref.Forward({&c, 1}, nullptr).ok());
  }
  bool sparse_differed = false;
  for (size_t i = 0; i < feed.size(); ++i) {
    Decoder::Feed fd{id, feed[i]};
    const int before = dec.report(id).rectifications;
    if ((i + 1) % f == 0) {
      // Just before the rectifying step, the sparse-produced K/V of this group.
      const int32_t lo = p + int32_t(i + 1) - f;
      ForwardChunk c{&rs, {feed.data() + (i + 1 - f), size_t(f)}, LogitsMode::kNone};
      ASSERT_TRUE(ref.Forward({&c, 1}, nullptr).ok());
      ASSERT_TRUE(dec.Step({&fd, 1}).ok());
      ASSERT_EQ(dec.report(id).rectifications, before + 1) << "step " << i;
      std::vector<float> got = KvOf(*cache, dec.kv(id), lo, lo + f);
      std::vector<float> want = KvOf(*ref_cache, rs, lo, lo + f);
      ASSERT_EQ(got.size(), want.size());
      EXPECT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * sizeof(float)))
          << "rectified K/V differ from dense at positions [" << lo << ", " << lo + f << ")";
      // Everything before is dense-produced as well.
      std::vector<float> all = KvOf(*cache, dec.kv(id), 0, lo + f);
      std::vector<float> all_ref = KvOf(*ref_cache, rs, 0, lo + f);
      EXPECT_EQ(0, std::memcmp(all.data(), all_ref.data(), all.size() * sizeof(float)));
    } else {
      ASSERT_TRUE(dec.Step({&fd, 1}).ok());
      ASSERT_EQ(dec.report(id).rectifications, before);
      // The sparse step's own K/V (next layer inputs came from sparse attention) differ from
      // the dense ones somewhere, or this test could not fail.
      if (i % f == f - 2) {
        auto scratch = NewCache();
        CpuModel sm(*weights_, *scratch);
        SequenceKv ss;
        std::vector<int32_t> all_tokens(prompt);
        all_tokens.insert(all_tokens.end(), feed.begin(), feed.begin() + i + 1);
        ForwardChunk c{&ss, all_tokens, LogitsMode::kNone};
        ASSERT_TRUE(sm.Forward({&c, 1}, nullptr).ok());
        const int32_t len = dec.kv(id).length;
        auto a = KvOf(*cache, dec.kv(id), len - 3, len);
        auto b = KvOf(*scratch, ss, len - 3, len);
        for (size_t k = 0; k < a.size(); ++k) sparse_differed |= std::fabs(a[k] - b[k]) > 1e-6f;
      }
    }
    ExpectSummariesFresh(*cache, dec.kv(id));
  }
  EXPECT_GT(dec.report(id).sparse_steps, 0);
  EXPECT_TRUE(sparse_differed) << "sparse steps never changed the K/V: the test is vacuous";
}

// A batch: sequences with different modes and rectification phases share steps; each one's
// logits equal running it alone, and sequences due together rectify in one pass.
TEST_F(DecoderTest, BatchedSequencesKeepTheirOwnPhase) {
  const int vocab = weights_->config.vocab_size;
  const int f = 4;
  auto cache = NewCache(128);
  CpuModel model(*weights_, *cache);
  Decoder batch(model, *cache);
  std::vector<std::vector<int32_t>> prompts = {Tokens(120, 7), Tokens(90, 8), Tokens(64, 9)};
  std::vector<ResaOptions> opts = {{DecodeMode::kResa, 0.2f, 2, f},
                                   {DecodeMode::kSparse, 0.2f, 2, f},
                                   {DecodeMode::kResa, 0.3f, 2, f}};
  std::vector<int> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(batch.Start(prompts[i], opts[i]).value());
  // Sequence 2 joins the stepping two steps late: its rectification phase is offset.
  auto feed = Tokens(12, 10);
  std::vector<std::vector<float>> logits(3);
  for (int step = 0; step < 12; ++step) {
    std::vector<Decoder::Feed> feeds;
    for (int i = 0; i < 3; ++i) {
      if (i == 2 && step < 2) continue;
      feeds.push_back({ids[i], feed[step]});
    }
    ASSERT_TRUE(batch.Step(feeds).ok());
  }
  for (int i = 0; i < 3; ++i) {
    auto solo_cache = NewCache();
    CpuModel solo_model(*weights_, *solo_cache);
    Decoder solo(solo_model, *solo_cache);
    const int id = solo.Start(prompts[i], opts[i]).value();
    for (int step = (i == 2 ? 2 : 0); step < 12; ++step) {
      Decoder::Feed fd{id, feed[step]};
      ASSERT_TRUE(solo.Step({&fd, 1}).ok());
    }
    EXPECT_EQ(solo.report(id).rectifications, batch.report(ids[i]).rectifications);
    for (int v = 0; v < vocab; ++v) {
      ASSERT_NEAR(solo.logits(id)[v], batch.logits(ids[i])[v], 2e-4) << "sequence " << i;
    }
  }
  EXPECT_EQ(batch.report(ids[0]).rectifications, 3);
  EXPECT_EQ(batch.report(ids[1]).rectifications, 0);
  EXPECT_EQ(batch.report(ids[2]).rectifications, 2);
}

TEST_F(DecoderTest, OptionsAreValidated) {
  auto cache = NewCache();
  CpuModel model(*weights_, *cache);
  Decoder dec(model, *cache);
  auto prompt = Tokens(10, 1);
  EXPECT_NE(dec.Start(prompt, ResaOptions{DecodeMode::kResa, 0.0f, 16, 32}).status().message().find(
                "--sparse-ratio"),
            std::string::npos);
  EXPECT_NE(dec.Start(prompt, ResaOptions{DecodeMode::kResa, 0.1f, 0, 32}).status().message().find(
                "--min-blocks"),
            std::string::npos);
  EXPECT_NE(dec.Start(prompt, ResaOptions{DecodeMode::kResa, 0.1f, 16, 0}).status().message().find(
                "--rectify-every"),
            std::string::npos);
  EXPECT_FALSE(ParseDecodeMode("fast").ok());
  EXPECT_NE(dec.Start(prompt, ResaOptions{}, -1).status().message().find("--prefill-chunk"),
            std::string::npos);
}

// A prefill chunk of 0 is the backend's (512 on the CPU): the same logits, bit for bit, as
// asking for 512 over a prompt that needs two chunks of it.
TEST_F(DecoderTest, PrefillChunkZeroIsTheBackendsDefault) {
  auto cache = NewCache(128);
  CpuModel model(*weights_, *cache);
  Decoder dec(model, *cache);
  EXPECT_EQ(dec.backend().prefill_chunk(), 512);
  const auto prompt = Tokens(600, 3);
  const int a = dec.Start(prompt, ResaOptions{DecodeMode::kDense}, 0).value();
  const int b = dec.Start(prompt, ResaOptions{DecodeMode::kDense}, 512).value();
  const int vocab = weights_->config.vocab_size;
  EXPECT_EQ(0, std::memcmp(dec.logits(a), dec.logits(b), size_t(vocab) * sizeof(float)));
}

}  // namespace
}  // namespace resa
