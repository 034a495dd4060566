// N ranks equal one rank (DESIGN.md §5): the TP x SP forward over in-process fake communicators
// on small random-weight models, against the single-rank forward on the same tokens. A ReSA
// sequence (chunked prefill, sparse steps, rectification) and a dense fork of it decode together
// in one batch, teacher-forced, and on every rank:
// - logits match the single rank within fp32 reordering tolerance (TP sums and SP merges reorder);
// - every sparse selection (layer, KV head, step) equals the single rank's;
// - the K/V of every block this rank owns, for its KV heads, match the single rank's, and the
//   SP ranks together hold each block exactly once.
#include <map>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/testing/tolerance.h"
#include "parallel/communicator_factory.h"
#include "parallel/testing/run_threads.h"
#include "runtime/engine/decoder.h"
#include "runtime/engine/model_grid.h"
#include "runtime/engine/synthetic_model.h"

namespace resa {
namespace {

constexpr int kPages = 48;  // per rank; a sequence of ~190 tokens needs 12 blocks

// Shapes beyond "tiny": 9 query / 3 KV heads (SmolLM2's ratio: uneven KV split at --tp 2), and
// 8 / 2 (KV heads replicated at --tp 4).
ModelConfig Shape(const std::string& name) {
  ModelConfig c = SyntheticConfig("tiny").value();
  if (name == "gqa9x3") {
    c.num_heads = 9;
    c.num_kv_heads = 3;
    c.head_dim = 16;
    c.hidden_size = 144;
  } else if (name == "gqa8x2") {
    c.num_heads = 8;
    c.num_kv_heads = 2;
    c.head_dim = 32;
    c.hidden_size = 256;
  }
  c.model_name = name;
  return c;
}

using SelectionKey = std::tuple<int, int, int>;  // layer, model KV head, occurrence
using KvKey = std::tuple<int, int, int>;         // layer, block, model KV head

struct RunResult {
  absl::Status status;
  std::vector<std::vector<float>> logits;  // per call: Start, then per step both sequences
  std::map<SelectionKey, std::vector<int32_t>> selections;
  std::map<KvKey, std::vector<float>> kv;  // K then V of the block's valid positions
};

std::vector<int32_t> Tokens(int n, int salt, int vocab) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = (i * 131 + salt * 17 + 5) % vocab;
  return t;
}

// The scenario on one rank; `world` null runs the single-rank reference.
RunResult RunScenario(const ModelConfig& cfg, const WeightSource& src, Communicator* world, int tp,
                      int sp) {
  RunResult out;
  auto fail = [&](const absl::Status& st) {
    out.status = st;
    return out;
  };
  ModelGrid grid;
  if (world != nullptr) {
    auto g = CreateModelGrid(*world, tp, sp, cfg);
    if (!g.ok()) return fail(g.status());
    grid = std::move(*g);
  } else {
    grid.shard = FullTpShard(cfg);
  }
  auto w = LoadCpuWeights(src, grid.shard);
  if (!w.ok()) return fail(w.status());
  auto cache = KvCache::Create(cfg, kPages, grid.kv_shard());
  if (!cache.ok()) return fail(cache.status());
  auto model = CpuModel::Create(**w, **cache, grid.groups());
  if (!model.ok()) return fail(model.status());
  std::map<std::pair<int, int>, int> seen;
  (*model)->set_selection_trace([&](int layer, int kvh, int64_t, std::span<const int32_t> b) {
    const int k = seen[{layer, kvh}]++;
    out.selections[{layer, kvh, k}] = std::vector<int32_t>(b.begin(), b.end());
  });

  const int vocab = cfg.vocab_size;
  Decoder dec(**model, **cache);
  auto prompt = Tokens(150, 1, vocab);
  auto resa = dec.Start(prompt, ResaOptions{DecodeMode::kResa, 0.2f, 2, 8}, 64);
  if (!resa.ok()) return fail(resa.status());
  out.logits.emplace_back(dec.logits(*resa), dec.logits(*resa) + vocab);
  auto dense = dec.Fork(*resa, ResaOptions{.mode = DecodeMode::kDense});
  if (!dense.ok()) return fail(dense.status());
  auto feed = Tokens(20, 2, vocab);
  for (size_t i = 0; i < feed.size(); ++i) {
    const Decoder::Feed f[2] = {{*resa, feed[i]}, {*dense, feed[feed.size() - 1 - i]}};
    if (absl::Status st = dec.Step(f); !st.ok()) return fail(st);
    out.logits.emplace_back(dec.logits(*resa), dec.logits(*resa) + vocab);
    out.logits.emplace_back(dec.logits(*dense), dec.logits(*dense) + vocab);
  }
  const SequenceKv& s = dec.kv(*resa);
  const SequenceShard& shard = (*cache)->shard();
  for (int l = 0; l < cfg.num_layers; ++l) {
    PagedKvLayer kv = (*cache)->layer(l);
    for (int32_t b = 0; b * kPageTokens < s.length; ++b) {
      if (!shard.Owns(b)) continue;
      const int valid = std::min(kPageTokens, s.length - b * kPageTokens);
      for (int h = 0; h < kv.num_kv_heads; ++h) {
        const int32_t page = (*cache)->Page(s, b);
        std::vector<float>& dst = out.kv[{l, b, grid.shard.kv_head_begin + h}];
        dst.assign(kv.k_at(page, h), kv.k_at(page, h) + valid * cfg.head_dim);
        dst.insert(dst.end(), kv.v_at(page, h), kv.v_at(page, h) + valid * cfg.head_dim);
      }
    }
  }
  return out;
}

struct GridCase {
  std::string shape;
  int tp, sp;
};
void PrintTo(const GridCase& g, std::ostream* os) {
  *os << g.shape << " tp " << g.tp << " sp " << g.sp;
}

class DistributedModelTest : public ::testing::TestWithParam<GridCase> {};

TEST_P(DistributedModelTest, MatchesOneRank) {
  const GridCase gc = GetParam();
  const ModelConfig cfg = Shape(gc.shape);
  auto src = MakeSyntheticWeights(cfg, 11);
  const RunResult ref = RunScenario(cfg, *src, nullptr, 1, 1);
  ASSERT_TRUE(ref.status.ok()) << ref.status;
  ASSERT_FALSE(ref.selections.empty()) << "the scenario must exercise sparse selection";

  const int n = gc.tp * gc.sp;
  auto world = CreateFakeGroup(n, CommunicatorOptions{.timeout = absl::Seconds(60)});
  ASSERT_TRUE(world.ok()) << world.status();
  std::vector<RunResult> got(n);
  testing::RunThreads(*world, [&](Communicator& comm) {
    got[size_t(comm.rank())] = RunScenario(cfg, *src, &comm, gc.tp, gc.sp);
  });

  std::map<KvKey, int> holders;
  for (int r = 0; r < n; ++r) {
    SCOPED_TRACE(::testing::Message()
                 << "rank " << r << " (tp " << r % gc.tp << ", sp " << r / gc.tp << ")");
    ASSERT_TRUE(got[r].status.ok()) << got[r].status;
    ASSERT_EQ(got[r].logits.size(), ref.logits.size());
    for (size_t i = 0; i < ref.logits.size(); ++i) {
      ASSERT_TRUE(testing::AllClose(got[r].logits[i].data(), ref.logits[i].data(),
                                    ref.logits[i].size(), testing::Tolerance{2e-4, 2e-4}))
          << "logits of call " << i;
    }
    // Selections: exactly the reference's entries for this rank's KV heads.
    ASSERT_FALSE(got[r].selections.empty());
    for (const auto& [key, blocks] : got[r].selections) {
      auto it = ref.selections.find(key);
      ASSERT_NE(it, ref.selections.end());
      EXPECT_EQ(blocks, it->second) << "layer " << std::get<0>(key) << " KV head "
                                    << std::get<1>(key) << " selection #" << std::get<2>(key);
    }
    for (const auto& [key, values] : got[r].kv) {
      auto it = ref.kv.find(key);
      ASSERT_NE(it, ref.kv.end());
      ASSERT_EQ(values.size(), it->second.size());
      EXPECT_TRUE(testing::AllClose(values.data(), it->second.data(), values.size(),
                                    testing::Tolerance{2e-4, 2e-4}))
          << "K/V of layer " << std::get<0>(key) << " block " << std::get<1>(key) << " KV head "
          << std::get<2>(key);
      holders[key]++;
    }
  }
  // Each (layer, block, KV head) lives on exactly one SP rank of each TP group holding the head.
  for (const auto& [key, count] : ref.kv) {
    const int replicas = std::max(1, gc.tp / cfg.num_kv_heads);
    EXPECT_EQ(holders[key], replicas) << "layer " << std::get<0>(key) << " block "
                                      << std::get<1>(key) << " KV head " << std::get<2>(key);
  }
}

INSTANTIATE_TEST_SUITE_P(Grids, DistributedModelTest,
                         ::testing::Values(GridCase{"tiny", 1, 1}, GridCase{"tiny", 1, 2},
                                           GridCase{"tiny", 2, 1}, GridCase{"tiny", 2, 2},
                                           GridCase{"tiny", 1, 3}, GridCase{"tiny", 1, 4},
                                           GridCase{"gqa9x3", 2, 1}, GridCase{"gqa9x3", 2, 2},
                                           GridCase{"gqa8x2", 4, 1}),
                         [](const ::testing::TestParamInfo<GridCase>& info) {
                           return info.param.shape + "_tp" + std::to_string(info.param.tp) + "_sp" +
                                  std::to_string(info.param.sp);
                         });

// Grids the model cannot take fail on every rank before any collective, naming the flag.
TEST(ModelGridTest, RejectsBadGrids) {
  auto world = CreateFakeGroup(1).value();
  const ModelConfig tiny = Shape("tiny");
  auto st = CreateModelGrid(*world[0], 2, 1, tiny).status();
  EXPECT_TRUE(absl::IsInvalidArgument(st));
  EXPECT_NE(st.message().find("mpirun -np"), std::string_view::npos) << st;
  EXPECT_TRUE(absl::IsInvalidArgument(MakeTpShard(tiny, 0, 4).status()));  // 2 KV, group of 3
  EXPECT_TRUE(absl::IsInvalidArgument(MakeTpShard(tiny, 0, 3).status()));  // 3 > 2, not a multiple
  const TpShard s = MakeTpShard(Shape("gqa9x3"), 1, 2).value();            // uneven KV groups
  EXPECT_EQ(s.kv_head_begin, 1);
  EXPECT_EQ(s.num_kv_heads, 2);
  EXPECT_EQ(s.head_begin, 3);
  EXPECT_EQ(s.num_heads, 6);
}

}  // namespace
}  // namespace resa
