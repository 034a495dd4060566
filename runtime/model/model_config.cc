#include "runtime/model/model_config.h"

#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"

namespace resa {
namespace {

// Generous upper bounds: far above any released Llama/Qwen2 model, low enough that products of
// two of them (weight sizes, q_dim) cannot overflow and a corrupt file fails here, not in malloc.
constexpr int kMaxVocab = 1 << 24;
constexpr int kMaxHidden = 1 << 18;
constexpr int kMaxIntermediate = 1 << 20;
constexpr int kMaxLayers = 4096;
constexpr int kMaxHeads = 4096;
constexpr int kMaxHeadDim = 4096;
constexpr int kMaxPositions = 1 << 30;

absl::Status Bad(const std::string& source, absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(source, ": invalid model config: ", field, " ", what));
}

absl::Status CheckRange(const std::string& source, absl::string_view field, int64_t v, int64_t lo,
                        int64_t hi) {
  if (v < lo || v > hi) {
    return Bad(source, field, absl::StrCat("= ", v, " is outside [", lo, ", ", hi, "]"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ModelConfig::Validate(const std::string& source) const {
  const absl::string_view expected_name = arch == Arch::kLlama ? "llama" : "qwen2";
  if (arch_name != expected_name) {
    return Bad(source, "arch_name",
               absl::StrCat("'", arch_name, "' does not match the architecture ", expected_name));
  }
  struct Field {
    absl::string_view name;
    int64_t value;
    int64_t lo, hi;
  };
  const Field fields[] = {
      {"vocab_size", vocab_size, 1, kMaxVocab},
      {"hidden_size", hidden_size, 1, kMaxHidden},
      {"intermediate_size", intermediate_size, 1, kMaxIntermediate},
      {"num_layers", num_layers, 1, kMaxLayers},
      {"num_heads", num_heads, 1, kMaxHeads},
      {"num_kv_heads", num_kv_heads, 1, kMaxHeads},
      {"head_dim", head_dim, 2, kMaxHeadDim},
      {"max_position_embeddings", max_position_embeddings, 1, kMaxPositions},
  };
  for (const Field& f : fields) {
    if (absl::Status st = CheckRange(source, f.name, f.value, f.lo, f.hi); !st.ok()) return st;
  }
  if (num_kv_heads > num_heads) {
    return Bad(source, "num_kv_heads",
               absl::StrCat("= ", num_kv_heads, " exceeds num_heads = ", num_heads));
  }
  if (num_heads % num_kv_heads != 0) {
    return Bad(
        source, "num_heads",
        absl::StrCat("= ", num_heads, " is not a multiple of num_kv_heads = ", num_kv_heads));
  }
  if (head_dim % 2 != 0) {
    return Bad(source, "head_dim",
               absl::StrCat("= ", head_dim,
                            " is odd; half-split RoPE needs "
                            "an even head dimension"));
  }
  if (static_cast<int64_t>(num_heads) * head_dim > kMaxHidden * int64_t{4}) {
    return Bad(source, "num_heads * head_dim",
               absl::StrCat("= ", int64_t{num_heads} * head_dim, " is absurdly large"));
  }
  if (!std::isfinite(rms_norm_eps) || rms_norm_eps <= 0.0f || rms_norm_eps >= 1.0f) {
    return Bad(source, "rms_norm_eps", absl::StrCat("= ", rms_norm_eps, " is outside (0, 1)"));
  }
  if (!std::isfinite(rope_theta) || rope_theta <= 1.0f) {
    return Bad(source, "rope_theta", absl::StrCat("= ", rope_theta, " must be finite and > 1"));
  }
  return absl::OkStatus();
}

}  // namespace resa
