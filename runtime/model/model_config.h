// Architecture hyper-parameters of a Llama/Qwen2-family decoder, read from the model files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace resa {

enum class Arch { kLlama, kQwen2 };

struct ModelConfig {
  Arch arch = Arch::kLlama;
  std::string arch_name;    // "llama" or "qwen2", as the files spell it
  std::string model_name;   // general.name / _name_or_path, for logs
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;         // hidden_size / num_heads unless the files say otherwise
  float rms_norm_eps = 1e-6f;
  float rope_theta = 10000.0f;
  int max_position_embeddings = 0;  // the model's trained context
  bool tie_word_embeddings = false; // lm_head shares the token embedding
  bool attention_bias = false;      // q/k/v projections carry a bias (Qwen2)

  int group_size() const { return num_heads / num_kv_heads; }
  int q_dim() const { return num_heads * head_dim; }
  int kv_dim() const { return num_kv_heads * head_dim; }

  // Checks ranges and divisibility; errors name the offending field and `source`.
  absl::Status Validate(const std::string& source) const;
};

}  // namespace resa
