#include "runtime/model/model_config.h"

#include <cmath>
#include <functional>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace resa {
namespace {

using ::testing::HasSubstr;

ModelConfig SmolLm2() {
  ModelConfig c;
  c.arch = Arch::kLlama;
  c.arch_name = "llama";
  c.vocab_size = 49152;
  c.hidden_size = 576;
  c.intermediate_size = 1536;
  c.num_layers = 30;
  c.num_heads = 9;
  c.num_kv_heads = 3;
  c.head_dim = 64;
  c.rms_norm_eps = 1e-5f;
  c.rope_theta = 100000.0f;
  c.max_position_embeddings = 8192;
  c.tie_word_embeddings = true;
  return c;
}

TEST(ModelConfig, AcceptsRealConfig) {
  EXPECT_TRUE(SmolLm2().Validate("smol").ok());
  ModelConfig q = SmolLm2();
  q.arch = Arch::kQwen2;
  q.arch_name = "qwen2";
  q.head_dim = 128;  // q_dim may differ from hidden_size when head_dim is explicit
  EXPECT_TRUE(q.Validate("qwen").ok());
  EXPECT_EQ(SmolLm2().group_size(), 3);
  EXPECT_EQ(SmolLm2().q_dim(), 576);
  EXPECT_EQ(SmolLm2().kv_dim(), 192);
}

struct Case {
  std::string field;
  std::function<void(ModelConfig&)> mutate;
};

TEST(ModelConfig, RejectsBadFieldsNamingThem) {
  const Case cases[] = {
      {"arch_name", [](ModelConfig& c) { c.arch_name = "qwen2"; }},
      {"vocab_size", [](ModelConfig& c) { c.vocab_size = 0; }},
      {"vocab_size", [](ModelConfig& c) { c.vocab_size = 1 << 30; }},
      {"hidden_size", [](ModelConfig& c) { c.hidden_size = -1; }},
      {"hidden_size", [](ModelConfig& c) { c.hidden_size = 2000000; }},
      {"intermediate_size", [](ModelConfig& c) { c.intermediate_size = 0; }},
      {"num_layers", [](ModelConfig& c) { c.num_layers = 0; }},
      {"num_layers", [](ModelConfig& c) { c.num_layers = 2000000; }},
      {"num_heads", [](ModelConfig& c) { c.num_heads = 0; }},
      {"num_kv_heads", [](ModelConfig& c) { c.num_kv_heads = 0; }},
      {"num_heads", [](ModelConfig& c) { c.num_kv_heads = 2; }},      // 9 % 2 != 0
      {"num_kv_heads", [](ModelConfig& c) { c.num_kv_heads = 18; }},  // more kv than q heads
      {"head_dim", [](ModelConfig& c) { c.head_dim = 0; }},
      {"head_dim", [](ModelConfig& c) { c.head_dim = 63; }},
      {"max_position_embeddings", [](ModelConfig& c) { c.max_position_embeddings = 0; }},
      {"rms_norm_eps", [](ModelConfig& c) { c.rms_norm_eps = 0.0f; }},
      {"rms_norm_eps", [](ModelConfig& c) { c.rms_norm_eps = NAN; }},
      {"rope_theta", [](ModelConfig& c) { c.rope_theta = -1.0f; }},
      {"rope_theta", [](ModelConfig& c) { c.rope_theta = INFINITY; }},
  };
  for (const Case& k : cases) {
    ModelConfig c = SmolLm2();
    k.mutate(c);
    absl::Status st = c.Validate("cfg.json");
    ASSERT_FALSE(st.ok()) << k.field;
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(st.message()), HasSubstr(k.field));
    EXPECT_THAT(std::string(st.message()), HasSubstr("cfg.json"));
  }
}

}  // namespace
}  // namespace resa
