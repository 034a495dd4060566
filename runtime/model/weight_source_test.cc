#include "runtime/model/weight_source.h"

#include <stdlib.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/model/gguf.h"
#include "runtime/model/gguf_writer.h"
#include "runtime/model/model_cache.h"
#include "runtime/model/safetensors.h"

namespace resa {
namespace {

using gguf::GgufBuilder;
using gguf::MakeFloat;
using gguf::MakeString;
using gguf::MakeUint;
using gguf::ValueType;
using ::testing::HasSubstr;

// ---- a tiny model with exactly representable weights --------------------------------------

constexpr int kHidden = 32, kHeads = 4, kKvHeads = 2, kHeadDim = 8, kInter = 64, kVocab = 40,
              kLayers = 2;

// Small integers: exact in F32, F16, BF16 and Q8_0 with d = 1.
float Val(int id, int64_t r, int64_t c) {
  return static_cast<float>((r * 7 + c * 3 + id * 11) % 97 - 48);
}

std::vector<float> Matrix(int id, int64_t rows, int64_t cols) {
  std::vector<float> m(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) m[static_cast<size_t>(r * cols + c)] = Val(id, r, c);
  }
  return m;
}

// llama.cpp's converter permutation (HF half-split -> interleaved), written as the converter
// does it: view rows as [head][e][j], store as [head][j][e].
std::vector<float> PermuteForGguf(const std::vector<float>& m, int64_t rows, int64_t cols,
                                  int64_t heads) {
  const int64_t hd = rows / heads;
  std::vector<float> out(m.size());
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t e = 0; e < 2; ++e) {
      for (int64_t j = 0; j < hd / 2; ++j) {
        const int64_t src = h * hd + e * (hd / 2) + j, dst = h * hd + 2 * j + e;
        std::memcpy(&out[static_cast<size_t>(dst * cols)], &m[static_cast<size_t>(src * cols)],
                    static_cast<size_t>(cols) * 4);
      }
    }
  }
  return out;
}

std::string Encode(GgmlType type, const std::vector<float>& v) {
  std::string out;
  if (type == GgmlType::kF32) {
    out.resize(v.size() * 4);
    std::memcpy(out.data(), v.data(), out.size());
  } else if (type == GgmlType::kF16) {
    for (float x : v) {
      const uint16_t h = FloatToHalf(x);
      out.append(reinterpret_cast<const char*>(&h), 2);
    }
  } else if (type == GgmlType::kQ8_0) {
    const uint16_t one = FloatToHalf(1.0f);
    for (size_t i = 0; i < v.size(); i += 32) {
      out.append(reinterpret_cast<const char*>(&one), 2);
      for (size_t j = 0; j < 32; ++j)
        out.push_back(static_cast<char>(static_cast<int8_t>(v[i + j])));
    }
  }
  return out;
}

struct TinyGguf {
  std::string arch = "llama";
  bool bias = false;
  bool tie = true;
  std::string skip;                                     // GGUF tensor to leave out
  std::map<std::string, std::vector<int64_t>> reshape;  // GGUF tensor -> ne override
  std::map<std::string, uint32_t> retype;               // GGUF tensor -> raw type id
};

// Tensor ids for Val(): stable per canonical role so tests can recompute expectations.
int IdOf(const std::string& role, int layer) {
  static const std::vector<std::string> roles = {"embed", "norm", "lm_head", "in_norm", "post_norm",
                                                 "q",     "k",    "v",       "o",       "qb",
                                                 "kb",    "vb",   "gate",    "up",      "down"};
  for (size_t i = 0; i < roles.size(); ++i) {
    if (roles[i] == role) return static_cast<int>(i) + 20 * layer;
  }
  return -1;
}

std::string BuildTinyGguf(const TinyGguf& o) {
  GgufBuilder b;
  const std::string& a = o.arch;
  b.Add("general.architecture", MakeString(a))
      .Add("general.name", MakeString("tiny"))
      .Add(a + ".block_count", MakeUint(ValueType::kUint32, kLayers))
      .Add(a + ".context_length", MakeUint(ValueType::kUint32, 128))
      .Add(a + ".embedding_length", MakeUint(ValueType::kUint32, kHidden))
      .Add(a + ".feed_forward_length", MakeUint(ValueType::kUint32, kInter))
      .Add(a + ".attention.head_count", MakeUint(ValueType::kUint32, kHeads))
      .Add(a + ".attention.head_count_kv", MakeUint(ValueType::kUint32, kKvHeads))
      .Add(a + ".rope.freq_base", MakeFloat(ValueType::kFloat32, 50000.0))
      .Add(a + ".attention.layer_norm_rms_epsilon", MakeFloat(ValueType::kFloat32, 1e-5));
  std::vector<gguf::Value> tokens;
  for (int i = 0; i < kVocab; ++i) tokens.push_back(MakeString(absl::StrCat("t", i)));
  b.Add("tokenizer.ggml.tokens", gguf::MakeArray(ValueType::kString, tokens));
  const bool permute = a == "llama";
  auto add = [&](const std::string& name, GgmlType type, int id, int64_t rows, int64_t cols,
                 int64_t permute_heads) {
    if (name == o.skip) return;
    std::vector<float> m = Matrix(id, rows, cols);
    if (permute && permute_heads > 0) {
      m = rows == 1 ? PermuteForGguf(m, cols, 1, permute_heads)
                    : PermuteForGguf(m, rows, cols, permute_heads);
    }
    std::vector<int64_t> ne =
        rows == 1 ? std::vector<int64_t>{cols} : std::vector<int64_t>{cols, rows};
    if (auto it = o.reshape.find(name); it != o.reshape.end()) ne = it->second;
    uint32_t type_id = static_cast<uint32_t>(type);
    if (auto it = o.retype.find(name); it != o.retype.end()) type_id = it->second;
    b.AddTensor(name, type_id, ne, Encode(type, m));
  };
  add("token_embd.weight", GgmlType::kQ8_0, IdOf("embed", 0), kVocab, kHidden, 0);
  add("output_norm.weight", GgmlType::kF32, IdOf("norm", 0), 1, kHidden, 0);
  if (!o.tie) add("output.weight", GgmlType::kF16, IdOf("lm_head", 0), kVocab, kHidden, 0);
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = absl::StrCat("blk.", l, ".");
    add(p + "attn_norm.weight", GgmlType::kF32, IdOf("in_norm", l), 1, kHidden, 0);
    add(p + "ffn_norm.weight", GgmlType::kF32, IdOf("post_norm", l), 1, kHidden, 0);
    add(p + "attn_q.weight", GgmlType::kF16, IdOf("q", l), kHeads * kHeadDim, kHidden, kHeads);
    add(p + "attn_k.weight", GgmlType::kF32, IdOf("k", l), kKvHeads * kHeadDim, kHidden, kKvHeads);
    add(p + "attn_v.weight", GgmlType::kQ8_0, IdOf("v", l), kKvHeads * kHeadDim, kHidden, 0);
    add(p + "attn_output.weight", GgmlType::kF32, IdOf("o", l), kHidden, kHeads * kHeadDim, 0);
    if (o.bias) {
      add(p + "attn_q.bias", GgmlType::kF32, IdOf("qb", l), 1, kHeads * kHeadDim, kHeads);
      add(p + "attn_k.bias", GgmlType::kF32, IdOf("kb", l), 1, kKvHeads * kHeadDim, kKvHeads);
      add(p + "attn_v.bias", GgmlType::kF32, IdOf("vb", l), 1, kKvHeads * kHeadDim, 0);
    }
    add(p + "ffn_gate.weight", GgmlType::kQ8_0, IdOf("gate", l), kInter, kHidden, 0);
    add(p + "ffn_up.weight", GgmlType::kF16, IdOf("up", l), kInter, kHidden, 0);
    add(p + "ffn_down.weight", GgmlType::kQ8_0, IdOf("down", l), kHidden, kInter, 0);
  }
  return b.Build();
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "/resa_model_XXXXXX";
    path_ = mkdtemp(tmpl.data()) ? tmpl : std::string();
  }
  ~TempDir() {
    std::error_code ec;  // best effort: a leftover temporary folder is not a test failure
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string Write(const std::string& name, const std::string& bytes) const {
    const std::string p = path_ + "/" + name;
    std::ofstream(p, std::ios::binary)
        .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return p;
  }

 private:
  std::string path_;
};

absl::StatusOr<std::unique_ptr<WeightSource>> OpenTiny(const TempDir& dir, const TinyGguf& o) {
  return OpenWeightSource(dir.Write("tiny.gguf", BuildTinyGguf(o)));
}

std::vector<float> ReadAll(const WeightSource& src, const std::string& name) {
  const WeightInfo* w = src.Find(name);
  if (w == nullptr) return {};
  std::vector<float> out(static_cast<size_t>(w->rows() * w->cols()));
  absl::Status st = src.ReadRowsF32(name, 0, w->rows(), out.data());
  EXPECT_TRUE(st.ok()) << st;
  return out;
}

void ExpectWeight(const WeightSource& src, const std::string& name, int id, int64_t rows,
                  int64_t cols) {
  SCOPED_TRACE(name);
  const WeightInfo* w = src.Find(name);
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->rows(), rows);
  EXPECT_EQ(w->cols(), cols);
  EXPECT_EQ(ReadAll(src, name), Matrix(id, rows, cols));
}

// ---- GGUF ------------------------------------------------------------------------------------

TEST(GgufSource, LlamaConfigNamesAndUnpermutedRows) {
  TempDir dir;
  absl::StatusOr<std::unique_ptr<WeightSource>> src =
      OpenTiny(dir, {.arch = "llama", .bias = true});
  ASSERT_TRUE(src.ok()) << src.status();
  const WeightSource& s = **src;
  const ModelConfig& c = s.config();
  EXPECT_EQ(c.arch, Arch::kLlama);
  EXPECT_EQ(c.model_name, "tiny");
  EXPECT_EQ(c.vocab_size, kVocab);  // from tokenizer.ggml.tokens / token_embd rows
  EXPECT_EQ(c.hidden_size, kHidden);
  EXPECT_EQ(c.intermediate_size, kInter);
  EXPECT_EQ(c.num_layers, kLayers);
  EXPECT_EQ(c.num_heads, kHeads);
  EXPECT_EQ(c.num_kv_heads, kKvHeads);
  EXPECT_EQ(c.head_dim, kHeadDim);
  EXPECT_EQ(c.max_position_embeddings, 128);
  EXPECT_FLOAT_EQ(c.rope_theta, 50000.0f);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_EQ(s.format(), "gguf");
  EXPECT_NE(s.gguf(), nullptr);
  EXPECT_EQ(s.Find("lm_head.weight"), nullptr);
  EXPECT_EQ(s.Find("blk.0.attn_q.weight"), nullptr);  // only canonical names
  const WeightInfo* q = s.Find("model.layers.1.self_attn.q_proj.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->dtype, "F16");
  EXPECT_EQ(q->shape, (std::vector<int64_t>{32, 32}));
  EXPECT_EQ(q->stored_bytes, 32u * 32u * 2u);
  EXPECT_EQ(s.weights().size(), 2u + 2u * 12u);  // tied: no lm_head

  ExpectWeight(s, "model.embed_tokens.weight", IdOf("embed", 0), kVocab, kHidden);
  ExpectWeight(s, "model.norm.weight", IdOf("norm", 0), 1, kHidden);
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    ExpectWeight(s, p + "input_layernorm.weight", IdOf("in_norm", l), 1, kHidden);
    ExpectWeight(s, p + "post_attention_layernorm.weight", IdOf("post_norm", l), 1, kHidden);
    ExpectWeight(s, p + "self_attn.q_proj.weight", IdOf("q", l), 32, kHidden);
    ExpectWeight(s, p + "self_attn.k_proj.weight", IdOf("k", l), 16, kHidden);
    ExpectWeight(s, p + "self_attn.v_proj.weight", IdOf("v", l), 16, kHidden);
    ExpectWeight(s, p + "self_attn.o_proj.weight", IdOf("o", l), kHidden, 32);
    ExpectWeight(s, p + "self_attn.q_proj.bias", IdOf("qb", l), 1, 32);
    ExpectWeight(s, p + "self_attn.k_proj.bias", IdOf("kb", l), 1, 16);
    ExpectWeight(s, p + "self_attn.v_proj.bias", IdOf("vb", l), 1, 16);
    ExpectWeight(s, p + "mlp.gate_proj.weight", IdOf("gate", l), kInter, kHidden);
    ExpectWeight(s, p + "mlp.up_proj.weight", IdOf("up", l), kInter, kHidden);
    ExpectWeight(s, p + "mlp.down_proj.weight", IdOf("down", l), kHidden, kInter);
  }
  // A row range crossing a head boundary, un-permuted.
  std::vector<float> rows(10 * kHidden);
  ASSERT_TRUE(s.ReadRowsF32("model.layers.0.self_attn.q_proj.weight", 5, 15, rows.data()).ok());
  const std::vector<float> full = Matrix(IdOf("q", 0), 32, kHidden);
  EXPECT_EQ(rows, std::vector<float>(full.begin() + 5 * kHidden, full.begin() + 15 * kHidden));
}

TEST(GgufSource, Qwen2IsNotPermutedAndUntiedHasLmHead) {
  TempDir dir;
  absl::StatusOr<std::unique_ptr<WeightSource>> src =
      OpenTiny(dir, {.arch = "qwen2", .bias = true, .tie = false});
  ASSERT_TRUE(src.ok()) << src.status();
  const WeightSource& s = **src;
  EXPECT_EQ(s.config().arch, Arch::kQwen2);
  EXPECT_FALSE(s.config().tie_word_embeddings);
  EXPECT_TRUE(s.config().attention_bias);
  ExpectWeight(s, "lm_head.weight", IdOf("lm_head", 0), kVocab, kHidden);
  ExpectWeight(s, "model.layers.0.self_attn.q_proj.weight", IdOf("q", 0), 32, kHidden);
  ExpectWeight(s, "model.layers.1.self_attn.k_proj.bias", IdOf("kb", 1), 1, 16);
}

TEST(GgufSource, ErrorsNameTheProblem) {
  TempDir dir;
  auto expect = [&](const TinyGguf& o, std::vector<std::string> parts) {
    absl::StatusOr<std::unique_ptr<WeightSource>> src = OpenTiny(dir, o);
    ASSERT_FALSE(src.ok());
    const std::string msg(src.status().message());
    EXPECT_THAT(msg, HasSubstr("tiny.gguf"));
    for (const std::string& p : parts) EXPECT_THAT(msg, HasSubstr(p));
  };
  expect({.arch = "gpt2"}, {"unsupported architecture 'gpt2'", "llama, qwen2"});
  expect({.skip = "blk.1.ffn_up.weight"},
         {"model.layers.1.mlp.up_proj.weight", "blk.1.ffn_up.weight", "missing"});
  expect({.reshape = {{"blk.0.attn_k.weight", {32, 8}}}},
         {"model.layers.0.self_attn.k_proj.weight", "[8, 32]", "[16, 32]"});
  expect({.retype = {{"blk.0.ffn_gate.weight", 20}}},  // IQ4_NL: parses, not dequantizable
         {"model.layers.0.mlp.gate_proj.weight", "IQ4_NL"});
}

TEST(GgufSource, MissingMetadataKeyIsNamed) {
  TempDir dir;
  GgufBuilder b;
  b.Add("general.architecture", MakeString("llama"));
  absl::StatusOr<std::unique_ptr<WeightSource>> src =
      OpenWeightSource(dir.Write("nokeys.gguf", b.Build()));
  ASSERT_FALSE(src.ok());
  EXPECT_THAT(std::string(src.status().message()), HasSubstr("llama.block_count"));
}

TEST(GgufSource, RowRangeAndNameErrors) {
  TempDir dir;
  absl::StatusOr<std::unique_ptr<WeightSource>> src = OpenTiny(dir, {});
  ASSERT_TRUE(src.ok()) << src.status();
  std::vector<float> buf(64 * 64);
  const std::string k = "model.layers.0.self_attn.k_proj.weight";
  EXPECT_EQ((*src)->ReadRowsF32(k, 0, 17, buf.data()).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ((*src)->ReadRowsF32(k, -1, 2, buf.data()).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ((*src)->ReadRowsF32(k, 3, 2, buf.data()).code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE((*src)->ReadRowsF32(k, 4, 4, nullptr).ok());
  absl::Status st = (*src)->ReadRowsF32("model.nope", 0, 1, buf.data());
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(st.message()), HasSubstr("model.nope"));
}

TEST(GgufSource, ConcurrentReadsAgree) {
  TempDir dir;
  absl::StatusOr<std::unique_ptr<WeightSource>> src = OpenTiny(dir, {.bias = true});
  ASSERT_TRUE(src.ok()) << src.status();
  const std::vector<WeightInfo> ws = (*src)->weights();
  std::vector<std::vector<float>> expected;
  for (const WeightInfo& w : ws) expected.push_back(ReadAll(**src, w.name));
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 20; ++rep) {
        for (size_t i = static_cast<size_t>(t); i < ws.size(); i += 2) {
          std::vector<float> out(expected[i].size());
          if (!(*src)->ReadRowsF32(ws[i].name, 0, ws[i].rows(), out.data()).ok() ||
              out != expected[i]) {
            ++mismatches[static_cast<size_t>(t)];
          }
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

// ---- safetensors -----------------------------------------------------------------------------

std::string Bf16Bytes(const std::vector<float>& v) {
  std::string s;
  for (float x : v) {
    const uint16_t b = FloatToBf16(x);
    s.append(reinterpret_cast<const char*>(&b), 2);
  }
  return s;
}

// HF tensors of the tiny model, in HF order, in the given dtype (F32, F16 or BF16).
std::vector<safetensors::TensorToWrite> HfTensors(bool bias, bool lm_head,
                                                  safetensors::Dtype dtype) {
  std::vector<safetensors::TensorToWrite> out;
  auto add = [&](const std::string& name, int id, int64_t rows, int64_t cols) {
    std::vector<float> m = Matrix(id, rows, cols);
    std::string bytes = dtype == safetensors::Dtype::kBF16  ? Bf16Bytes(m)
                        : dtype == safetensors::Dtype::kF16 ? Encode(GgmlType::kF16, m)
                                                            : Encode(GgmlType::kF32, m);
    std::vector<int64_t> shape =
        rows == 1 ? std::vector<int64_t>{cols} : std::vector<int64_t>{rows, cols};
    out.push_back({name, dtype, shape, bytes});
  };
  add("model.embed_tokens.weight", IdOf("embed", 0), kVocab, kHidden);
  add("model.norm.weight", IdOf("norm", 0), 1, kHidden);
  if (lm_head) add("lm_head.weight", IdOf("lm_head", 0), kVocab, kHidden);
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    add(p + "input_layernorm.weight", IdOf("in_norm", l), 1, kHidden);
    add(p + "post_attention_layernorm.weight", IdOf("post_norm", l), 1, kHidden);
    add(p + "self_attn.q_proj.weight", IdOf("q", l), 32, kHidden);
    add(p + "self_attn.k_proj.weight", IdOf("k", l), 16, kHidden);
    add(p + "self_attn.v_proj.weight", IdOf("v", l), 16, kHidden);
    add(p + "self_attn.o_proj.weight", IdOf("o", l), kHidden, 32);
    if (bias) {
      add(p + "self_attn.q_proj.bias", IdOf("qb", l), 1, 32);
      add(p + "self_attn.k_proj.bias", IdOf("kb", l), 1, 16);
      add(p + "self_attn.v_proj.bias", IdOf("vb", l), 1, 16);
    }
    add(p + "mlp.gate_proj.weight", IdOf("gate", l), kInter, kHidden);
    add(p + "mlp.up_proj.weight", IdOf("up", l), kInter, kHidden);
    add(p + "mlp.down_proj.weight", IdOf("down", l), kHidden, kInter);
  }
  return out;
}

nlohmann::json HfConfig(const std::string& model_type, bool tie) {
  return {{"architectures", {model_type == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM"}},
          {"model_type", model_type},
          {"hidden_size", kHidden},
          {"intermediate_size", kInter},
          {"num_hidden_layers", kLayers},
          {"num_attention_heads", kHeads},
          {"num_key_value_heads", kKvHeads},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 100000.0},
          {"max_position_embeddings", 256},
          {"tie_word_embeddings", tie},
          {"vocab_size", kVocab},
          {"rope_scaling", nullptr}};
}

TEST(SafetensorsSource, SingleFileLlamaBf16) {
  TempDir dir;
  dir.Write("config.json", HfConfig("llama", true).dump());
  dir.Write("model.safetensors",
            safetensors::SerializeSafetensors(HfTensors(false, false, safetensors::Dtype::kBF16)));
  absl::StatusOr<std::unique_ptr<WeightSource>> src = OpenWeightSource(dir.path());
  ASSERT_TRUE(src.ok()) << src.status();
  const WeightSource& s = **src;
  EXPECT_EQ(s.format(), "safetensors");
  EXPECT_EQ(s.hf_dir(), dir.path());
  EXPECT_EQ(s.gguf(), nullptr);
  EXPECT_EQ(s.config().arch, Arch::kLlama);
  EXPECT_EQ(s.config().head_dim, kHeadDim);
  EXPECT_EQ(s.config().max_position_embeddings, 256);
  EXPECT_FLOAT_EQ(s.config().rope_theta, 100000.0f);
  EXPECT_TRUE(s.config().tie_word_embeddings);
  EXPECT_FALSE(s.config().attention_bias);
  EXPECT_EQ(s.Find("model.embed_tokens.weight")->dtype, "BF16");
  ExpectWeight(s, "model.layers.1.self_attn.q_proj.weight", IdOf("q", 1), 32, kHidden);
  ExpectWeight(s, "model.norm.weight", IdOf("norm", 0), 1, kHidden);
  std::vector<float> rows(3 * kInter);
  ASSERT_TRUE(s.ReadRowsF32("model.layers.0.mlp.down_proj.weight", 4, 7, rows.data()).ok());
  EXPECT_EQ(rows[0], Val(IdOf("down", 0), 4, 0));
  EXPECT_EQ(rows[3 * kInter - 1], Val(IdOf("down", 0), 6, kInter - 1));
  // A file inside the directory stands for it.
  EXPECT_TRUE(OpenWeightSource(dir.path() + "/config.json").ok());
}

TEST(SafetensorsSource, ShardedQwen2MixedDtypes) {
  TempDir dir;
  dir.Write("config.json", HfConfig("qwen2", false).dump());
  std::vector<safetensors::TensorToWrite> f16 = HfTensors(true, true, safetensors::Dtype::kF16);
  std::vector<safetensors::TensorToWrite> f32 = HfTensors(true, true, safetensors::Dtype::kF32);
  std::vector<safetensors::TensorToWrite> shard1, shard2;
  nlohmann::json map = nlohmann::json::object();
  for (size_t i = 0; i < f16.size(); ++i) {
    const bool first = i % 2 == 0;
    (first ? shard1 : shard2).push_back(first ? f16[i] : f32[i]);
    map[f16[i].name] =
        first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  dir.Write("model-00001-of-00002.safetensors", safetensors::SerializeSafetensors(shard1));
  dir.Write("model-00002-of-00002.safetensors", safetensors::SerializeSafetensors(shard2));
  dir.Write("model.safetensors.index.json",
            nlohmann::json{{"metadata", {{"total_size", 0}}}, {"weight_map", map}}.dump());
  absl::StatusOr<std::unique_ptr<WeightSource>> src = OpenWeightSource(dir.path() + "/");
  ASSERT_TRUE(src.ok()) << src.status();
  const WeightSource& s = **src;
  EXPECT_EQ(s.config().arch, Arch::kQwen2);
  EXPECT_TRUE(s.config().attention_bias);
  EXPECT_FALSE(s.config().tie_word_embeddings);
  ASSERT_EQ(s.weights().size(), f32.size());
  for (const auto& t : f32) {
    std::vector<float> want(t.bytes.size() / 4);
    std::memcpy(want.data(), t.bytes.data(), t.bytes.size());
    EXPECT_EQ(ReadAll(s, t.name), want) << t.name;
  }
}

class SafetensorsErrors : public ::testing::Test {
 protected:
  // Writes config + single model.safetensors and returns the open error message ("" if ok).
  std::string OpenError(const nlohmann::json& config,
                        const std::vector<safetensors::TensorToWrite>& tensors) {
    dir_.Write("config.json", config.dump());
    dir_.Write("model.safetensors", safetensors::SerializeSafetensors(tensors));
    absl::StatusOr<std::unique_ptr<WeightSource>> src = OpenWeightSource(dir_.path());
    return src.ok() ? "" : std::string(src.status().message());
  }
  TempDir dir_;
};

TEST_F(SafetensorsErrors, MissingLmHeadWhenUntied) {
  const std::string msg =
      OpenError(HfConfig("llama", false), HfTensors(false, false, safetensors::Dtype::kF32));
  EXPECT_THAT(msg, HasSubstr("'lm_head.weight'"));
  EXPECT_THAT(msg, HasSubstr("missing"));
}

TEST_F(SafetensorsErrors, MisshapedAndUnreadableTensors) {
  std::vector<safetensors::TensorToWrite> t = HfTensors(false, false, safetensors::Dtype::kF32);
  for (auto& x : t) {
    if (x.name == "model.layers.1.mlp.up_proj.weight") x.shape = {kHidden, kInter};
  }
  EXPECT_THAT(OpenError(HfConfig("llama", true), t),
              HasSubstr("'model.layers.1.mlp.up_proj.weight' has shape [32, 64]"));
  t = HfTensors(false, false, safetensors::Dtype::kF32);
  for (auto& x : t) {
    if (x.name == "model.norm.weight") x.dtype = safetensors::Dtype::kI32;
  }
  EXPECT_THAT(OpenError(HfConfig("llama", true), t), HasSubstr("dtype I32"));
}

TEST_F(SafetensorsErrors, BadConfigs) {
  const auto tensors = HfTensors(false, false, safetensors::Dtype::kF32);
  nlohmann::json c = HfConfig("llama", true);
  c["model_type"] = "mistral";
  EXPECT_THAT(OpenError(c, tensors), HasSubstr("unsupported architecture 'mistral'"));
  c = HfConfig("llama", true);
  c.erase("hidden_size");
  EXPECT_THAT(OpenError(c, tensors), HasSubstr("'hidden_size' is missing"));
  c = HfConfig("llama", true);
  c["num_attention_heads"] = "four";
  EXPECT_THAT(OpenError(c, tensors), HasSubstr("'num_attention_heads' is not an integer"));
  c = HfConfig("llama", true);
  c["num_key_value_heads"] = 3;
  EXPECT_THAT(OpenError(c, tensors), HasSubstr("num_heads"));
  c = HfConfig("llama", true);
  c.erase("model_type");  // architectures[0] is enough
  EXPECT_EQ(OpenError(c, tensors), "");
  dir_.Write("config.json", "{not json");
  absl::StatusOr<std::unique_ptr<WeightSource>> src = OpenWeightSource(dir_.path());
  ASSERT_FALSE(src.ok());
  EXPECT_THAT(std::string(src.status().message()), HasSubstr("config.json: invalid JSON"));
}

TEST_F(SafetensorsErrors, BadIndex) {
  dir_.Write("config.json", HfConfig("llama", true).dump());
  dir_.Write("model.safetensors.index.json",
             R"({"weight_map": {"model.norm.weight": "../../etc/passwd"}})");
  absl::StatusOr<std::unique_ptr<WeightSource>> src = OpenWeightSource(dir_.path());
  ASSERT_FALSE(src.ok());
  EXPECT_THAT(std::string(src.status().message()), HasSubstr("not a file name"));
  dir_.Write("shard.safetensors", safetensors::SerializeSafetensors({}));
  dir_.Write("model.safetensors.index.json",
             R"({"weight_map": {"model.norm.weight": "shard.safetensors"}})");
  src = OpenWeightSource(dir_.path());
  ASSERT_FALSE(src.ok());
  EXPECT_THAT(std::string(src.status().message()), HasSubstr("does not contain it"));
}

TEST(OpenWeightSource, BadPaths) {
  EXPECT_EQ(OpenWeightSource("/nonexistent/model.gguf").status().code(),
            absl::StatusCode::kNotFound);
  TempDir dir;
  absl::StatusOr<std::unique_ptr<WeightSource>> src = OpenWeightSource(dir.path());
  ASSERT_FALSE(src.ok());
  EXPECT_THAT(std::string(src.status().message()), HasSubstr("config.json"));
  src = OpenWeightSource(dir.Write("weights.bin", "hello"));
  ASSERT_FALSE(src.ok());
  EXPECT_THAT(std::string(src.status().message()), HasSubstr("neither a .gguf"));
}

// ---- the real default model --------------------------------------------------------------------

TEST(RealModel, SmolLm2Q4_1) {
  const std::string path = DefaultModelPath();
  if (access(path.c_str(), R_OK) != 0) {
    GTEST_SKIP() << "default model not found at " << path
                 << " (install it with the README's setup command)";
  }
  absl::StatusOr<std::unique_ptr<WeightSource>> src = OpenWeightSource(path);
  ASSERT_TRUE(src.ok()) << src.status();
  const WeightSource& s = **src;
  const ModelConfig& c = s.config();
  EXPECT_EQ(c.arch, Arch::kLlama);
  EXPECT_EQ(c.num_layers, 30);
  EXPECT_EQ(c.hidden_size, 576);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.num_heads, 9);
  EXPECT_EQ(c.num_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FLOAT_EQ(c.rope_theta, 100000.0f);

  std::ifstream in(std::string(RESA_MODEL_TESTDATA) + "/smollm2_q_rows.json");
  const nlohmann::json ref = nlohmann::json::parse(in, nullptr, false);
  ASSERT_FALSE(ref.is_discarded()) << "testdata/smollm2_q_rows.json missing or invalid";
  int checked = 0;
  for (const auto& w : ref["weights"]) {
    const std::string name = w["name"].get<std::string>();
    const WeightInfo* info = s.Find(name);
    ASSERT_NE(info, nullptr) << name;
    EXPECT_EQ(info->dtype, w["type"].get<std::string>()) << name;
    for (const auto& [row_str, sums] : w["rows"].items()) {
      const int64_t r = std::stoll(row_str);
      std::vector<float> row(static_cast<size_t>(info->cols()));
      ASSERT_TRUE(s.ReadRowsF32(name, r, r + 1, row.data()).ok()) << name;
      double sum = 0, abs_sum = 0, weighted = 0;
      for (size_t i = 0; i < row.size(); ++i) {
        sum += row[i];
        abs_sum += std::fabs(row[i]);
        weighted += row[i] * std::cos(static_cast<double>(i) * 0.1);
      }
      const std::vector<double> first = sums["first"].get<std::vector<double>>();
      for (size_t i = 0; i < first.size(); ++i) {
        EXPECT_NEAR(row[i], first[i], 1e-6 * (1 + std::fabs(first[i]))) << name << " row " << r;
      }
      const double tol = 1e-4 * (1 + sums["abs_sum"].get<double>());
      EXPECT_NEAR(sum, sums["sum"].get<double>(), tol) << name << " row " << r;
      EXPECT_NEAR(abs_sum, sums["abs_sum"].get<double>(), tol) << name << " row " << r;
      EXPECT_NEAR(weighted, sums["weighted"].get<double>(), tol) << name << " row " << r;
      ++checked;
    }
  }
  EXPECT_GE(checked, 20);
}

// Opens any GGUF named by RESA_TEST_GGUF and reads every weight (manual checks of big models).
TEST(RealModel, ExtraGgufFromEnvironment) {
  const char* path = std::getenv("RESA_TEST_GGUF");
  if (path == nullptr || *path == '\0') GTEST_SKIP() << "RESA_TEST_GGUF not set";
  absl::StatusOr<std::unique_ptr<WeightSource>> src = OpenWeightSource(path);
  ASSERT_TRUE(src.ok()) << src.status();
  std::map<std::string, int> types;
  int64_t elements = 0;
  for (const WeightInfo& w : (*src)->weights()) {
    std::vector<float> data(static_cast<size_t>(w.rows() * w.cols()));
    ASSERT_TRUE((*src)->ReadRowsF32(w.name, 0, w.rows(), data.data()).ok()) << w.name;
    for (float x : data) ASSERT_TRUE(std::isfinite(x)) << w.name;
    ++types[w.dtype];
    elements += static_cast<int64_t>(data.size());
  }
  std::string summary;
  for (const auto& [t, n] : types) summary += absl::StrCat(t, ":", n, " ");
  std::printf("%s: %s, %lld elements, types %s\n", path, (*src)->config().arch_name.c_str(),
              static_cast<long long>(elements), summary.c_str());
}

}  // namespace
}  // namespace resa

namespace resa {
namespace {

TEST(SafetensorsSource, ScaledRopeIsRefused) {
  TempDir dir;
  nlohmann::json cfg = HfConfig("llama", true);
  cfg["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  dir.Write("config.json", cfg.dump());
  dir.Write("model.safetensors",
            safetensors::SerializeSafetensors(HfTensors(false, false, safetensors::Dtype::kBF16)));
  absl::StatusOr<std::unique_ptr<WeightSource>> src = OpenWeightSource(dir.path());
  ASSERT_FALSE(src.ok());
  EXPECT_EQ(src.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(src.status().message().find("rope_scaling"), absl::string_view::npos);
}

}  // namespace
}  // namespace resa
