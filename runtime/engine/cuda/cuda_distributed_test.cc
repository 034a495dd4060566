// GPU ranks of a TP x SP grid equal one GPU (cuda_model.h, "Distributed"): N CudaModels on one
// device, one per thread, over in-process fake communicators (host buffers, so every
// collective takes the pinned staging path the MPI ranks sharing a GPU take), against a single
// CudaModel on the same tokens. A ReSA sequence (chunked prefill, sparse steps, rectification)
// and a dense fork of it decode together, teacher-forced. On every rank:
// - logits are bitwise identical across all ranks of the grid (TP all-reduces and SP merges
//   give every rank the same bits), and within kRelL2 of the single GPU's (TP sums and SP merges
//   reorder fp32 sums, which can move a bf16 rounding of the next layer's inputs) on every call
//   whose sparse selections equal the single GPU's (a near-tie may swap a block in a later layer,
//   and one other block changes a random model's attention a lot: measured 0.16-0.21 rel L2 on
//   the one such call per grid);
// - greedy choices equal the single GPU's on those calls wherever its top two logits are kTie
//   apart;
// - every sparse selection has the single GPU's size, layer 0's are identical to it under SP
//   (identical inputs there, scores bit-identical to the fused kernel's), and later layers'
//   agree almost everywhere;
// - device sampling of the gathered logits picks the same ids on every rank.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/cuda_test_util.h"
#include "parallel/communicator_factory.h"
#include "parallel/testing/run_threads.h"
#include "runtime/engine/cuda/cuda_model.h"
#include "runtime/engine/decoder.h"
#include "runtime/engine/model_grid.h"
#include "runtime/engine/synthetic_model.h"

namespace resa::cuda {
namespace {

// Measured worst per grid 0.004-0.0075 while chunks kept gate_up in fp32, 0.009-0.023 since
// they round it to bf16 (three roundings an element where a reordered fp32 sum can flip one,
// not one); a differing block measures 0.16-0.21.
constexpr double kRelL2 = 4e-2;
constexpr float kTie = 0.05f;
constexpr int32_t kPages = 64;  // per rank; ~190 tokens need 12 blocks

// head_dim 128 Qwen2 (QKV bias) with 4 / 2 heads (KV heads replicated at --tp 4), and head_dim
// 64 Llama with 9 / 3 heads (SmolLM2's ratio: an uneven split at --tp 2).
ModelConfig Shape(const std::string& name) {
  ModelConfig c = SyntheticConfig("r1-qwen-1.5b").value();
  c.vocab_size = 2048;
  c.num_layers = 3;
  if (name == "qwen4x2") {
    c.hidden_size = 512;
    c.intermediate_size = 1024;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 128;
  } else {
    c = SyntheticConfig("smollm2-135m").value();
    c.vocab_size = 2048;
    c.num_layers = 3;
    c.hidden_size = 576;
    c.intermediate_size = 1024;
    c.num_heads = 9;
    c.num_kv_heads = 3;
    c.head_dim = 64;
  }
  c.model_name = name;
  return c;
}

using SelectionKey = std::tuple<int, int, int>;  // layer, model KV head, occurrence

struct RunResult {
  absl::Status status;
  std::vector<std::vector<float>> logits;  // per call: Start, then per step both sequences
  std::vector<int32_t> sampled;            // device greedy samples after each step
  std::map<SelectionKey, std::vector<int32_t>> selections;
  // Per decode step: (layer, model KV head) -> the ReSA row's selection.
  std::vector<std::map<std::pair<int, int>, std::vector<int32_t>>> steps;
};

std::vector<int32_t> Tokens(int n, int salt, int vocab) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = (i * 131 + salt * 17 + 5) % vocab;
  return t;
}

// The scenario on one rank; `world` null runs the single-GPU reference.
RunResult RunScenario(const ModelConfig& cfg, const WeightSource& src, Communicator* world, int tp,
                      int sp) {
  RunResult out;
  auto fail = [&](const absl::Status& st) {
    out.status = st;
    return out;
  };
  if (cudaSetDevice(0) != cudaSuccess) return fail(absl::InternalError("cudaSetDevice(0)"));
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
  CudaModelOptions o;
  o.kv_pages = kPages;
  auto model = CudaModel::FromCpuWeights(**w, o, {grid.tp_comm.get(), grid.sp_comm.get()});
  if (!model.ok()) return fail(model.status());
  std::map<std::pair<int, int>, int> seen;
  (*model)->set_selection_trace([&](int layer, int kvh, int64_t, std::span<const int32_t> b) {
    const int k = seen[{layer, kvh}]++;
    out.selections[{layer, kvh, k}] = std::vector<int32_t>(b.begin(), b.end());
    if (!out.steps.empty()) out.steps.back()[{layer, kvh}].assign(b.begin(), b.end());
  });

  const int vocab = cfg.vocab_size;
  Decoder dec(**model);
  auto prompt = Tokens(150, 1, vocab);
  auto resa = dec.Start(prompt, ResaOptions{DecodeMode::kResa, 0.2f, 2, 8}, 64);
  if (!resa.ok()) return fail(resa.status());
  out.logits.emplace_back(dec.logits(*resa), dec.logits(*resa) + vocab);
  auto dense = dec.Fork(*resa, ResaOptions{.mode = DecodeMode::kDense});
  if (!dense.ok()) return fail(dense.status());
  auto feed = Tokens(20, 2, vocab);
  for (size_t i = 0; i < feed.size(); ++i) {
    const Decoder::Feed f[2] = {{*resa, feed[i]}, {*dense, feed[feed.size() - 1 - i]}};
    out.steps.emplace_back();
    if (absl::Status st = dec.Step(f); !st.ok()) return fail(st);
    out.logits.emplace_back(dec.logits(*resa), dec.logits(*resa) + vocab);
    out.logits.emplace_back(dec.logits(*dense), dec.logits(*dense) + vocab);
    // The step's logits rows are still on the device: greedy samples of both.
    const RowSampling rows[2] = {{0, SamplingParams{.temperature = 0.0f}, 0.5},
                                 {1, SamplingParams{.temperature = 0.0f}, 0.5}};
    int32_t ids[2];
    if (absl::Status st = (*model)->Sample(rows, ids); !st.ok()) return fail(st);
    out.sampled.insert(out.sampled.end(), ids, ids + 2);
  }
  return out;
}

double RelL2(const std::vector<float>& got, const std::vector<float>& ref) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (double(got[i]) - ref[i]) * (double(got[i]) - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

int32_t ArgMax(const std::vector<float>& v) {
  return int32_t(std::max_element(v.begin(), v.end()) - v.begin());
}

// The top logit's lead over the runner-up.
float Margin(const std::vector<float>& v) {
  std::vector<float> s = v;
  std::partial_sort(s.begin(), s.begin() + 2, s.end(), std::greater<float>());
  return s[0] - s[1];
}

struct GridCase {
  std::string shape;
  int tp, sp;
};
void PrintTo(const GridCase& g, std::ostream* os) {
  *os << g.shape << " tp " << g.tp << " sp " << g.sp;
}

class CudaDistributedTest : public testing::CudaTest,
                            public ::testing::WithParamInterface<GridCase> {};

TEST_P(CudaDistributedTest, GridMatchesOneGpu) {
  const GridCase gc = GetParam();
  const ModelConfig cfg = Shape(gc.shape);
  auto src = MakeSyntheticWeights(cfg, 11);
  const RunResult ref = RunScenario(cfg, *src, nullptr, 1, 1);
  ASSERT_TRUE(ref.status.ok()) << ref.status;
  ASSERT_FALSE(ref.selections.empty()) << "the scenario must exercise sparse selection";

  const int n = gc.tp * gc.sp;
  auto world = CreateFakeGroup(n, CommunicatorOptions{.timeout = absl::Seconds(120)});
  ASSERT_TRUE(world.ok()) << world.status();
  std::vector<RunResult> got(n);
  resa::testing::RunThreads(*world, [&](Communicator& comm) {
    got[size_t(comm.rank())] = RunScenario(cfg, *src, &comm, gc.tp, gc.sp);
  });

  // Call 1 + 2 s is the ReSA row of step s. Its logits depend on every KV head's selection, held
  // by different TP ranks: it is compared only when the selections of all ranks equal the single
  // GPU's.
  std::vector<bool> flipped(ref.steps.size(), false);
  for (int r = 0; r < n; ++r) {
    ASSERT_TRUE(got[r].status.ok()) << "rank " << r << ": " << got[r].status;
    ASSERT_EQ(got[r].steps.size(), ref.steps.size());
    for (size_t s = 0; s < ref.steps.size(); ++s) {
      for (const auto& [key, blocks] : got[r].steps[s]) {
        auto it = ref.steps[s].find(key);
        if (it == ref.steps[s].end() || it->second != blocks) flipped[s] = true;
      }
    }
  }
  double worst = 0.0;
  int64_t compared = 0, same = 0, layer0 = 0, skipped_calls = 0;
  for (int r = 0; r < n; ++r) {
    SCOPED_TRACE(::testing::Message()
                 << "rank " << r << " (tp " << r % gc.tp << ", sp " << r / gc.tp << ")");
    ASSERT_TRUE(got[r].status.ok()) << got[r].status;
    ASSERT_EQ(got[r].logits.size(), ref.logits.size());
    for (size_t i = 0; i < ref.logits.size(); ++i) {
      ASSERT_EQ(0, std::memcmp(got[r].logits[i].data(), got[0].logits[i].data(),
                               ref.logits[i].size() * sizeof(float)))
          << "logits of call " << i << " differ from rank 0's";
      if (i % 2 == 1 && flipped[i / 2]) {
        ++skipped_calls;
        continue;
      }
      const double e = RelL2(got[r].logits[i], ref.logits[i]);
      worst = std::max(worst, e);
      EXPECT_LE(e, kRelL2) << "logits of call " << i;
      if (Margin(ref.logits[i]) > kTie) {
        EXPECT_EQ(ArgMax(got[r].logits[i]), ArgMax(ref.logits[i])) << "greedy choice of call " << i;
      }
    }
    // Device samples: the argmax of this rank's own (gathered) logits.
    ASSERT_EQ(got[r].sampled.size(), ref.logits.size() - 1);
    for (size_t i = 0; i < got[r].sampled.size(); ++i) {
      EXPECT_EQ(got[r].sampled[i], ArgMax(got[r].logits[1 + i])) << "device sample " << i;
    }
    // Selections: the reference's entries for this rank's KV heads, same sizes.
    ASSERT_FALSE(got[r].selections.empty());
    for (const auto& [key, blocks] : got[r].selections) {
      auto it = ref.selections.find(key);
      ASSERT_NE(it, ref.selections.end());
      ASSERT_EQ(blocks.size(), it->second.size());
      ++compared;
      same += blocks == it->second;
      if (std::get<0>(key) == 0 && gc.tp == 1) {
        ++layer0;
        EXPECT_EQ(blocks, it->second) << "layer 0 KV head " << std::get<1>(key) << " selection #"
                                      << std::get<2>(key);
      }
    }
  }
  // Later layers see inputs that differ by fp32 reordering: near-ties may flip a block.
  EXPECT_GE(same, compared * 9 / 10) << "selections identical in " << same << " of " << compared;
  // A flip is rare: most ReSA calls keep the single GPU's selections.
  EXPECT_LE(std::count(flipped.begin(), flipped.end(), true), 3)
      << "steps with a differing selection";
  std::printf("[grid] %s tp %d sp %d: worst logits rel L2 %.3g (%lld rank-calls with a "
              "differing selection not compared); selections identical %lld of %lld (layer 0 "
              "checked exactly: %lld)\n",
              gc.shape.c_str(), gc.tp, gc.sp, worst, static_cast<long long>(skipped_calls),
              static_cast<long long>(same), static_cast<long long>(compared),
              static_cast<long long>(layer0));
}

INSTANTIATE_TEST_SUITE_P(Grids, CudaDistributedTest,
                         ::testing::Values(GridCase{"qwen4x2", 1, 2}, GridCase{"qwen4x2", 2, 1},
                                           GridCase{"qwen4x2", 2, 2}, GridCase{"qwen4x2", 1, 3},
                                           GridCase{"qwen4x2", 4, 1}, GridCase{"llama9x3", 2, 1},
                                           GridCase{"llama9x3", 1, 4}),
                         [](const ::testing::TestParamInfo<GridCase>& info) {
                           return info.param.shape + "_tp" + std::to_string(info.param.tp) +
                                  "_sp" + std::to_string(info.param.sp);
                         });

// The SP local view's key count (host arithmetic, no GPU needed): the positions of [0, num_keys)
// whose block the rank owns, counted one by one.
TEST(LocalKeysTest, CountsTheOwnedPositions) {
  for (int size = 1; size <= 4; ++size) {
    for (int rank = 0; rank < size; ++rank) {
      const SequenceShard shard{rank, size};
      int32_t owned = 0;
      for (int32_t keys = 0; keys <= 300; ++keys) {
        ASSERT_EQ(LocalKeys(shard, keys), owned) << "rank " << rank << " of " << size << ", "
                                                 << keys << " keys";
        owned += shard.Owns(keys / kPageTokens) ? 1 : 0;  // position `keys` joins the next count
      }
    }
  }
}

class CudaGridGroups : public testing::CudaTest {};

// Weights and groups that disagree are refused before anything runs.
TEST_F(CudaGridGroups, CudaModelRejectsMismatchedGroups) {
  const ModelConfig cfg = Shape("qwen4x2");
  auto src = MakeSyntheticWeights(cfg, 5);
  auto full = LoadCpuWeights(*src).value();
  auto world = CreateFakeGroup(2).value();
  CudaModelOptions o;
  o.kv_pages = 8;
  auto st = CudaModel::FromCpuWeights(*full, o, {world[0].get(), nullptr}).status();
  EXPECT_TRUE(absl::IsInvalidArgument(st)) << st;
  EXPECT_NE(st.message().find("TP rank"), std::string_view::npos) << st;
}

}  // namespace
}  // namespace resa::cuda
