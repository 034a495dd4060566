// resa-make-model's library: what it writes loads back through the project's own loader with
// every tensor's name, shape, dtype and bytes exact; sharded equals unsharded; the model runs
// with finite logits; bad input fails with a message and leaves nothing behind.
#include "runtime/apps/make_model.h"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/apps/model_loading.h"
#include "runtime/engine/cpu_model.h"
#include "runtime/engine/generate.h"
#include "runtime/engine/kv_cache.h"
#include "runtime/engine/synthetic_model.h"
#include "runtime/model/safetensors.h"
#include "runtime/tokenizer/tokenizer.h"

namespace resa {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void WriteAll(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

std::set<std::string> Listing(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

class MakeModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("resa_make_model_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  MakeModelOptions Tiny(const std::string& name, const std::string& dtype = "bf16") const {
    MakeModelOptions o;
    o.shape = "tiny";
    o.out_dir = (root_ / name).string();
    o.dtype = dtype;
    o.progress = false;
    return o;
  }
  // No "<out>.partial" staging directory or "*.partial" file left anywhere under root_.
  void ExpectNoPartials() const {
    for (const auto& e : fs::recursive_directory_iterator(root_)) {
      EXPECT_THAT(e.path().string(), ::testing::Not(HasSubstr(".partial")));
    }
  }
  fs::path root_;
};

class MakeModelDtypeTest : public MakeModelTest,
                           public ::testing::WithParamInterface<const char*> {};

// Every tensor: the name, shape and dtype planned, in Hugging Face order, with exactly the bytes
// of the synthetic weights converted to the dtype; the config as the shape defines it.
TEST_P(MakeModelDtypeTest, EveryTensorRoundTripsExactly) {
  const MakeModelOptions o = Tiny("m", GetParam());
  ASSERT_TRUE(MakeModel(o).ok());
  EXPECT_EQ(Listing(o.out_dir), (std::set<std::string>{"config.json", "model.safetensors",
                                                       "tokenizer.json", "tokenizer_config.json"}));
  ExpectNoPartials();

  auto loaded = OpenWeightSource(o.out_dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const ModelConfig want = *MakeModelConfig("tiny");
  const ModelConfig& got = (*loaded)->config();
  EXPECT_EQ(got.arch, want.arch);
  EXPECT_EQ(got.vocab_size, want.vocab_size);
  EXPECT_EQ(got.hidden_size, want.hidden_size);
  EXPECT_EQ(got.intermediate_size, want.intermediate_size);
  EXPECT_EQ(got.num_layers, want.num_layers);
  EXPECT_EQ(got.num_heads, want.num_heads);
  EXPECT_EQ(got.num_kv_heads, want.num_kv_heads);
  EXPECT_EQ(got.head_dim, want.head_dim);
  EXPECT_EQ(got.rms_norm_eps, want.rms_norm_eps);
  EXPECT_EQ(got.rope_theta, want.rope_theta);
  EXPECT_EQ(got.max_position_embeddings, want.max_position_embeddings);
  EXPECT_EQ(got.tie_word_embeddings, want.tie_word_embeddings);
  EXPECT_EQ(got.attention_bias, want.attention_bias);

  const safetensors::Dtype dtype = *ParseMakeModelDtype(GetParam());
  const auto synthetic = MakeSyntheticWeights(want, o.seed);
  const std::vector<WeightInfo> plan = PlanTensors(*synthetic);
  auto file = safetensors::SafetensorsFile::Open(o.out_dir + "/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->tensors().size(), plan.size());
  EXPECT_EQ((*loaded)->weights().size(), plan.size());
  for (size_t i = 0; i < plan.size(); ++i) {
    const WeightInfo& w = plan[i];
    const safetensors::TensorInfo& t = (*file)->tensors()[i];  // in file order
    SCOPED_TRACE(w.name);
    EXPECT_EQ(t.name, w.name);
    EXPECT_EQ(t.shape, w.shape);
    EXPECT_EQ(t.dtype, dtype);
    std::vector<float> values(w.rows() * w.cols());
    ASSERT_TRUE(synthetic->ReadRowsF32(w.name, 0, w.rows(), values.data()).ok());
    std::vector<uint8_t> expected(values.size() * safetensors::DtypeSize(dtype));
    EncodeF32(dtype, values.data(), int64_t(values.size()), expected.data());
    ASSERT_EQ(t.end - t.begin, expected.size());
    EXPECT_EQ(std::memcmp(t.data, expected.data(), expected.size()), 0);
  }
  EXPECT_EQ(plan.front().name, "model.embed_tokens.weight");
  EXPECT_EQ(plan.back().name, "lm_head.weight");
}

INSTANTIATE_TEST_SUITE_P(Dtypes, MakeModelDtypeTest, ::testing::Values("bf16", "f16", "f32"));

TEST_F(MakeModelTest, ShardedLoadsTheSameAsUnsharded) {
  const MakeModelOptions single = Tiny("single");
  MakeModelOptions sharded = Tiny("sharded");
  sharded.shard_gb = 0.0004;  // 400 kB: the 1.4 MB tiny model splits into several shards
  ASSERT_TRUE(MakeModel(single).ok());
  ASSERT_TRUE(MakeModel(sharded).ok());
  const std::set<std::string> files = Listing(sharded.out_dir);
  EXPECT_FALSE(files.contains("model.safetensors"));
  ASSERT_TRUE(files.contains("model.safetensors.index.json"));
  const auto index =
      nlohmann::json::parse(ReadAll(sharded.out_dir + "/model.safetensors.index.json"));
  std::set<std::string> shard_names;
  for (const auto& [name, shard] : index["weight_map"].items()) shard_names.insert(shard);
  ASSERT_GE(shard_names.size(), 3u);
  uint64_t data_bytes = 0;
  for (const std::string& s : shard_names) {
    EXPECT_THAT(s, ::testing::MatchesRegex("model-0000[0-9]-of-0000" +
                                           std::to_string(shard_names.size()) + "\\.safetensors"));
    auto f = safetensors::SafetensorsFile::Open(sharded.out_dir + "/" + s);
    ASSERT_TRUE(f.ok()) << f.status();
    uint64_t bytes = 0;
    for (const auto& t : (*f)->tensors()) bytes += t.end - t.begin;
    EXPECT_LE(bytes, 400000u) << s;
    data_bytes += bytes;
  }
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), data_bytes);

  auto a = OpenWeightSource(single.out_dir);
  auto b = OpenWeightSource(sharded.out_dir);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ((*a)->weights().size(), (*b)->weights().size());
  for (const WeightInfo& w : (*a)->weights()) {
    const WeightInfo* wb = (*b)->Find(w.name);
    ASSERT_NE(wb, nullptr) << w.name;
    EXPECT_EQ(wb->shape, w.shape);
    EXPECT_EQ(wb->dtype, w.dtype);
    std::vector<float> va(w.rows() * w.cols()), vb(va.size());
    ASSERT_TRUE((*a)->ReadRowsF32(w.name, 0, w.rows(), va.data()).ok());
    ASSERT_TRUE((*b)->ReadRowsF32(w.name, 0, w.rows(), vb.data()).ok());
    EXPECT_EQ(va, vb) << w.name;
  }
}

// The written model runs: the tokenizer round-trips text, a prefill gives finite, non-constant
// logits, and greedy generation produces the requested tokens.
TEST_F(MakeModelTest, GeneratesWithFiniteLogits) {
  const MakeModelOptions o = Tiny("m");
  ASSERT_TRUE(MakeModel(o).ok());
  LoadOptions lo;
  lo.progress = false;
  auto model = LoadModel(o.out_dir, lo);
  ASSERT_TRUE(model.ok()) << model.status();
  const Tokenizer& tok = *model->tokenizer;
  const int vocab = model->weights->config.vocab_size;
  EXPECT_EQ(tok.vocab_size(), vocab);
  auto ids = tok.Encode("hello world, the model runs!");
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(tok.Decode(*ids), "hello world, the model runs!");
  EXPECT_LT(ids->size(), 28u);  // merges apply (" w", " t", ...): fewer tokens than bytes
  const ChatMessage msg{"user", "hi"};
  EXPECT_TRUE(tok.ApplyChatTemplate({&msg, 1}, true).ok());
  EXPECT_THAT(tok.StopIds(), ::testing::Contains(vocab - 3));  // <|endoftext|>

  auto cache = KvCache::Create(model->weights->config, 4);
  ASSERT_TRUE(cache.ok());
  CpuModel m(*model->weights, **cache);
  SequenceKv seq;
  ForwardChunk chunk{&seq, *ids, LogitsMode::kAll};
  std::vector<float> logits(ids->size() * size_t(vocab));
  ASSERT_TRUE(m.Forward({&chunk, 1}, logits.data()).ok());
  float lo_v = logits[0], hi_v = logits[0];
  for (float v : logits) {
    ASSERT_TRUE(std::isfinite(v));
    lo_v = std::min(lo_v, v);
    hi_v = std::max(hi_v, v);
  }
  EXPECT_GT(hi_v - lo_v, 0.1f);
  (*cache)->Release(seq);

  GenerateOptions go;
  go.max_new_tokens = 8;
  std::vector<int32_t> out;
  auto stats = Generate(m, **cache, *ids, go, [&](int32_t t) {
    out.push_back(t);
    return true;
  });
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->generated_tokens, 8);
  for (int32_t t : out) EXPECT_TRUE(t >= 0 && t < vocab);
}

// With --dtype f32 and the default seed the directory is `synthetic:tiny`, bit for bit.
TEST_F(MakeModelTest, F32DirectoryEqualsTheSyntheticModel) {
  const MakeModelOptions o = Tiny("m", "f32");
  ASSERT_TRUE(MakeModel(o).ok());
  LoadOptions lo;
  lo.progress = false;
  lo.need_tokenizer = false;
  auto dir = LoadModel(o.out_dir, lo);
  auto syn = LoadModel("synthetic:tiny", lo);
  ASSERT_TRUE(dir.ok()) << dir.status();
  ASSERT_TRUE(syn.ok()) << syn.status();
  const std::vector<int32_t> ids = {1, 100, 257, 311, 7, 42};
  std::vector<std::vector<float>> logits;
  for (LoadedModel* lm : {&*dir, &*syn}) {
    auto cache = KvCache::Create(lm->weights->config, 2);
    ASSERT_TRUE(cache.ok());
    CpuModel m(*lm->weights, **cache);
    SequenceKv seq;
    ForwardChunk chunk{&seq, ids, LogitsMode::kAll};
    logits.emplace_back(ids.size() * size_t(lm->weights->config.vocab_size));
    ASSERT_TRUE(m.Forward({&chunk, 1}, logits.back().data()).ok());
  }
  EXPECT_EQ(logits[0], logits[1]);
}

TEST_F(MakeModelTest, BadInputFailsWithAMessageAndLeavesNothing) {
  MakeModelOptions o = Tiny("m");
  o.shape = "llama-70b";
  absl::Status st = MakeModel(o);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("unknown --shape 'llama-70b'"));
  EXPECT_THAT(st.message(), HasSubstr("r1-distill-qwen-1.5b, r1-distill-qwen-7b"));
  EXPECT_THAT(st.message(), HasSubstr("tiny"));

  o = Tiny("m", "int8");
  st = MakeModel(o);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("--dtype 'int8'"));

  for (double gb : {0.0, -1.0, std::nan("")}) {
    o = Tiny("m");
    o.shard_gb = gb;
    st = MakeModel(o);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << gb;
    EXPECT_THAT(st.message(), HasSubstr("--shard-gb"));
  }

  // --out is a file, or below one.
  WriteAll(root_ / "file", "x");
  o = Tiny("file");
  st = MakeModel(o);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("not a directory"));
  o = Tiny("file/model");
  st = MakeModel(o);
  EXPECT_FALSE(st.ok());
  EXPECT_THAT(st.message(), HasSubstr("file"));

  // A missing or unusable --tokenizer-from fails after staging began: nothing is left behind.
  o = Tiny("m");
  o.tokenizer_from = (root_ / "nope.json").string();
  st = MakeModel(o);
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(st.message(), HasSubstr("nope.json"));
  WriteAll(root_ / "model.gguf", "GGUF\3\0\0\0");
  o.tokenizer_from = (root_ / "model.gguf").string();
  st = MakeModel(o);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("tokenizer.json"));
  fs::create_directories(root_ / "big");
  WriteAll(root_ / "big/tokenizer.json", MakeTokenizerJson(600)->tokenizer_json);
  o.tokenizer_from = (root_ / "big/tokenizer.json").string();
  st = MakeModel(o);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("600 tokens exceed the model's vocab_size 512"));
  EXPECT_FALSE(fs::exists(root_ / "m"));
  ExpectNoPartials();
}

TEST_F(MakeModelTest, ExistingOutNeedsForce) {
  fs::create_directories(root_ / "empty");
  EXPECT_TRUE(MakeModel(Tiny("empty")).ok());  // an empty directory is fine

  fs::create_directories(root_ / "full");
  WriteAll(root_ / "full/keep.txt", "mine");
  MakeModelOptions o = Tiny("full");
  absl::Status st = MakeModel(o);
  EXPECT_EQ(st.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(st.message(), HasSubstr("--force"));
  EXPECT_EQ(ReadAll(root_ / "full/keep.txt"), "mine");
  o.force = true;
  ASSERT_TRUE(MakeModel(o).ok());
  EXPECT_FALSE(fs::exists(root_ / "full/keep.txt"));
  EXPECT_TRUE(OpenWeightSource(o.out_dir).ok());
  EXPECT_EQ(Listing(root_), (std::set<std::string>{"empty", "full"}));  // no .old-* left
}

TEST_F(MakeModelTest, TokenizerFromIsCopiedWithItsConfig) {
  fs::create_directories(root_ / "tok");
  const GeneratedTokenizer gen = *MakeTokenizerJson(500);
  WriteAll(root_ / "tok/tokenizer.json", gen.tokenizer_json);
  WriteAll(root_ / "tok/tokenizer_config.json", gen.tokenizer_config_json);
  MakeModelOptions o = Tiny("m");
  o.tokenizer_from = (root_ / "tok/tokenizer.json").string();
  ASSERT_TRUE(MakeModel(o).ok());
  EXPECT_EQ(ReadAll(root_ / "m/tokenizer.json"), gen.tokenizer_json);
  EXPECT_EQ(ReadAll(root_ / "m/tokenizer_config.json"), gen.tokenizer_config_json);
  const auto config = nlohmann::json::parse(ReadAll(root_ / "m/config.json"));
  EXPECT_EQ(config["eos_token_id"], gen.eos_id);
  LoadOptions lo;
  lo.progress = false;
  auto model = LoadModel(o.out_dir, lo);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->tokenizer->vocab_size(), 500);
}

// The named shapes carry the real models' config.json values.
TEST(MakeModelShapes, R1DistillShapesMatchTheRealConfigs) {
  struct Want {
    const char* shape;
    int hidden, layers, heads, kv_heads, inter, vocab;
    int64_t params;
  };
  for (const Want& w : {Want{"r1-distill-qwen-1.5b", 1536, 28, 12, 2, 8960, 151936, 1777088000},
                        Want{"r1-distill-qwen-7b", 3584, 28, 28, 4, 18944, 152064, 7615616512}}) {
    SCOPED_TRACE(w.shape);
    absl::StatusOr<ModelConfig> c = MakeModelConfig(w.shape);
    ASSERT_TRUE(c.ok()) << c.status();
    const auto j = nlohmann::json::parse(HfConfigJson(*c, safetensors::Dtype::kBF16, 7, 7));
    EXPECT_EQ(j["architectures"], nlohmann::json::array({"Qwen2ForCausalLM"}));
    EXPECT_EQ(j["model_type"], "qwen2");
    EXPECT_EQ(j["hidden_size"], w.hidden);
    EXPECT_EQ(j["num_hidden_layers"], w.layers);
    EXPECT_EQ(j["num_attention_heads"], w.heads);
    EXPECT_EQ(j["num_key_value_heads"], w.kv_heads);
    EXPECT_EQ(j["intermediate_size"], w.inter);
    EXPECT_EQ(j["vocab_size"], w.vocab);
    EXPECT_EQ(j["rope_theta"], 10000.0);
    EXPECT_EQ(j["rms_norm_eps"], 1e-6);
    EXPECT_EQ(j["max_position_embeddings"], 131072);
    EXPECT_EQ(j["tie_word_embeddings"], false);
    EXPECT_EQ(j["torch_dtype"], "bfloat16");
    EXPECT_FALSE(j.contains("head_dim"));  // hidden / heads = 128
    EXPECT_TRUE(c->attention_bias);
    int64_t params = 0;
    for (const WeightInfo& wi : PlanTensors(*MakeSyntheticWeights(*c, 1))) {
      params += wi.rows() * wi.cols();
    }
    EXPECT_EQ(params, w.params);  // as Hugging Face reports for the real checkpoints
  }
  EXPECT_THAT(MakeModelShapes(),
              ::testing::IsSupersetOf(
                  {"r1-distill-qwen-1.5b", "r1-distill-qwen-7b", "tiny", "smollm2-135m"}));
}

TEST(MakeModelShapes, PlanShards) {
  EXPECT_THAT(PlanShards({5, 5, 5}, 10), ElementsAre(0, 2));
  EXPECT_THAT(PlanShards({5, 5, 5}, 4), ElementsAre(0, 1, 2));  // oversized: one per shard
  EXPECT_THAT(PlanShards({5, 5, 5}, 100), ElementsAre(0));
  EXPECT_THAT(PlanShards({}, 100), ElementsAre(0));
}

TEST(MakeModelShapes, GeneratedTokenizerCoversTheVocabulary) {
  for (int vocab : {259, 512, 49152}) {
    absl::StatusOr<GeneratedTokenizer> gen = MakeTokenizerJson(vocab);
    ASSERT_TRUE(gen.ok()) << gen.status();
    auto tok = Tokenizer::FromJsonText(gen->tokenizer_json, "generated");
    ASSERT_TRUE(tok.ok()) << tok.status();
    EXPECT_EQ((*tok)->vocab_size(), vocab);
    EXPECT_EQ(gen->eos_id, vocab - 3);
    EXPECT_EQ((*tok)->TokenId("<|im_end|>"), vocab - 1);
    const std::string text = "Ünïcode and bytes \x01\x7f ok";
    auto ids = (*tok)->Encode(text);
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ((*tok)->Decode(*ids), text);
    if (vocab >= 49152) {  // every pair and many triples: about 3 bytes a token
      auto ascii = (*tok)->Encode("the quick brown fox jumps over the lazy dog");
      ASSERT_TRUE(ascii.ok());
      EXPECT_LE(ascii->size(), 43u / 2);  // 43 bytes
    }
  }
  EXPECT_EQ(MakeTokenizerJson(258).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace resa
