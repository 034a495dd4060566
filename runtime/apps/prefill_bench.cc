#include "runtime/apps/prefill_bench.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "runtime/core/status.h"
#include "runtime/engine/backend_factory.h"
#include "runtime/engine/decoder.h"
#include "runtime/engine/synthetic_model.h"

namespace resa {
namespace {

struct PrefillOptions {
  std::vector<std::string> models = {"r1-qwen-1.5b", "r1-qwen-7b"};
  std::vector<int> prompts = {4096, 32768};
  std::vector<int> chunks = {512, 2048, 4096, 8192};
  int repeats = 3;      // timed prefills per row; the best is reported
  bool profile = true;  // then one more prefill with an event per kernel group
};

// What a prefill of `prompt` tokens in chunks of `chunk` must do at least. FLOPs: every linear
// layer once per token (2 per weight), the logits row's lm_head, and causal attention (token t
// attends to t keys: 4 d t a head for QK and PV). Bytes: every weight once per chunk (the
// embedding rows excluded), each chunk's read of the K/V before it and the K/V it writes.
struct PrefillCost {
  double flops = 0, bytes = 0;
};
PrefillCost Cost(const ModelConfig& c, int64_t prompt, int64_t chunk) {
  const double hid = c.hidden_size, qkv = c.q_dim() + 2.0 * c.kv_dim();
  const double layer_weights = qkv * hid + hid * c.q_dim() + 3.0 * c.intermediate_size * hid;
  const double lm_head = double(c.vocab_size) * hid;
  const double p = double(prompt);
  PrefillCost cost;
  cost.flops = 2.0 * p * c.num_layers * layer_weights + 2.0 * lm_head +
               4.0 * c.num_layers * c.num_heads * c.head_dim * p * (p + 1) / 2;
  const double kv_token = 2.0 * c.num_layers * c.num_kv_heads * c.head_dim * 2.0;
  const int64_t chunks = (prompt + chunk - 1) / chunk;
  double kv_read = 0;
  for (int64_t i = 0; i < chunks; ++i) kv_read += double(i * chunk) * kv_token;
  cost.bytes = double(chunks) * 2.0 * (c.num_layers * layer_weights) + 2.0 * lm_head + kv_read +
               p * kv_token;
  return cost;
}

struct Row {
  std::string model;
  int prompt = 0, chunk = 0;
  double ms = 0, flop_ms = 0, byte_ms = 0;
  std::vector<std::pair<std::string, double>> profile;  // ms by kernel group, one prefill
};

// Times Decoder::Start (it returns once the last chunk's logits are on the host).
absl::StatusOr<double> TimePrefill(Decoder& dec, std::span<const int32_t> prompt, int chunk) {
  const auto t0 = std::chrono::steady_clock::now();
  RESA_ASSIGN_OR_RETURN(const int id, dec.Start(prompt, ResaOptions{DecodeMode::kDense}, chunk));
  const double ms =
      1e3 * std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  dec.Finish(id);
  return ms;
}

absl::StatusOr<Row> RunRow(ModelBackend& backend, const std::string& model, int prompt_len,
                           int chunk, const PrefillOptions& o, double gemm_tflops,
                           double copy_gbps) {
  Row row{model, prompt_len, chunk};
  const ModelConfig& c = backend.config();
  std::vector<int32_t> prompt(static_cast<size_t>(prompt_len));
  for (size_t i = 0; i < prompt.size(); ++i) {
    prompt[i] = int32_t((i * 7919 + 13) % size_t(c.vocab_size));
  }
  Decoder dec(backend);
  // Warm-up: buffers reach their size for this chunk (the first chunk of the prompt).
  const size_t warm = std::min(prompt.size(), size_t(chunk));
  RESA_RETURN_IF_ERROR(
      TimePrefill(dec, std::span<const int32_t>(prompt).first(warm), chunk).status());
  row.ms = 1e30;
  for (int r = 0; r < o.repeats; ++r) {
    RESA_ASSIGN_OR_RETURN(const double ms, TimePrefill(dec, prompt, chunk));
    row.ms = std::min(row.ms, ms);
  }
  const PrefillCost cost = Cost(c, prompt_len, chunk);
  row.flop_ms = 1e3 * cost.flops / (gemm_tflops * 1e12);
  row.byte_ms = 1e3 * cost.bytes / (copy_gbps * 1e9);
  if (o.profile) {
    backend.set_profiling(true);
    backend.TakeProfile();
    absl::Status st = TimePrefill(dec, prompt, chunk).status();
    backend.set_profiling(false);
    RESA_RETURN_IF_ERROR(st);
    row.profile = backend.TakeProfile();
  }
  return row;
}

int RunPrefill(const PrefillOptions& o) {
  auto fail = [](const absl::Status& st) {
    std::fprintf(stderr, "resa-bench prefill: %s\n", std::string(st.message()).c_str());
    return 1;
  };
  if (CudaDeviceCount() < 1) {
    std::fprintf(stderr,
                 "resa-bench prefill: no CUDA device (the CPU's prefill speed: "
                 "resa-bench generate)\n");
    std::printf("{\"bench\":\"prefill\",\"error\":\"no CUDA device\"}\n");
    return 1;
  }
  auto copy = MeasureDeviceCopyGbps(Device::kCuda);
  if (!copy.ok()) return fail(copy.status());
  auto gemm = MeasureDeviceGemmTflops(Device::kCuda);
  if (!gemm.ok()) return fail(gemm.status());
  std::printf("{\"bench\":\"prefill_ceilings\",\"copy_gbps\":%.1f,\"gemm_tflops\":%.1f}\n", *copy,
              *gemm);
  std::fflush(stdout);
  std::vector<Row> rows;
  for (const std::string& model : o.models) {
    auto cfg = SyntheticConfig(model);
    if (!cfg.ok()) return fail(cfg.status());
    auto backend = MakeRandomBackend(*cfg, 1, BackendOptions{Device::kCuda, 0});
    if (!backend.ok()) return fail(backend.status());
    std::fprintf(stderr, "%s: %s\n", model.c_str(), backend->description.c_str());
    ModelBackend& m = *backend->model;
    for (int prompt : o.prompts) {
      if (int64_t(prompt) + kPageTokens > m.max_tokens()) {
        std::printf(
            "{\"bench\":\"prefill\",\"model\":\"%s\",\"prompt\":%d,\"skipped\":\"the "
            "device holds %d KV tokens\"}\n",
            model.c_str(), prompt, m.max_tokens());
        continue;
      }
      for (int chunk : o.chunks) {
        auto row = RunRow(m, model, prompt, chunk, o, *gemm, *copy);
        if (!row.ok()) {
          std::printf(
              "{\"bench\":\"prefill\",\"model\":\"%s\",\"prompt\":%d,\"chunk\":%d,"
              "\"error\":%s}\n",
              model.c_str(), prompt, chunk,
              nlohmann::json(std::string(row.status().message())).dump().c_str());
          continue;
        }
        nlohmann::json prof = nlohmann::json::object();
        for (const auto& [group, ms] : row->profile) prof[group] = ms;
        const double bound = std::max(row->flop_ms, row->byte_ms);
        std::printf(
            "{\"bench\":\"prefill\",\"model\":\"%s\",\"prompt\":%d,\"chunk\":%d,"
            "\"ms\":%.3f,\"tokens_per_s\":%.0f,\"flop_bound_ms\":%.3f,"
            "\"byte_bound_ms\":%.3f,\"ratio_to_bound\":%.3f,\"profile_ms\":%s}\n",
            model.c_str(), prompt, chunk, row->ms, 1e3 * prompt / row->ms, row->flop_ms,
            row->byte_ms, row->ms / bound, prof.dump().c_str());
        std::fflush(stdout);
        rows.push_back(*row);
      }
    }
  }
  std::fprintf(stderr,
               "\nceilings measured now: bf16 GEMM %.0f TFLOP/s, copy %.0f GB/s; prefill of one "
               "prompt (first token's logits included), best of %d\n"
               "| model | prompt | chunk | ms | tokens/s | FLOP bound ms | byte bound ms | x bound "
               "| vs best chunk |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
               *gemm, *copy, o.repeats);
  for (const Row& r : rows) {
    double best = r.ms;
    for (const Row& q : rows) {
      if (q.model == r.model && q.prompt == r.prompt) best = std::min(best, q.ms);
    }
    std::fprintf(stderr, "| %s | %d | %d | %.2f | %.0f | %.2f | %.2f | %.2f | %.2fx |\n",
                 r.model.c_str(), r.prompt, r.chunk, r.ms, 1e3 * r.prompt / r.ms, r.flop_ms,
                 r.byte_ms, r.ms / std::max(r.flop_ms, r.byte_ms), r.ms / best);
  }
  std::fprintf(stderr,
               "\nwhere the time goes: device ms by kernel group (one eager prefill with "
               "events)\n");
  for (const Row& r : rows) {
    if (r.profile.empty()) continue;
    std::string line = absl::StrFormat("%s prompt %d chunk %d:", r.model, r.prompt, r.chunk);
    double sum = 0;
    for (const auto& [group, ms] : r.profile) {
      absl::StrAppendFormat(&line, " %s %.2f", group, ms);
      sum += ms;
    }
    absl::StrAppendFormat(&line, " | sum %.2f (timed prefill %.2f)", sum, r.ms);
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  return 0;
}

}  // namespace

void AddPrefillBenchCommand(CLI::App& app, int& exit_code) {
  static PrefillOptions o;
  CLI::App* p = app.add_subcommand(
      "prefill", "Whole-model prefill speed on the GPU by prompt and chunk size vs its bounds");
  p->add_option("--models", o.models, "Synthetic shapes")->delimiter(',')->capture_default_str();
  p->add_option("--prompts", o.prompts, "Prompt lengths in tokens")
      ->delimiter(',')
      ->check(CLI::Range(1, 1 << 24))
      ->capture_default_str();
  p->add_option("--chunks", o.chunks, "Prefill chunk sizes (prompt tokens per forward)")
      ->delimiter(',')
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  p->add_option("--repeats", o.repeats, "Timed prefills per row (the best is reported)")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  p->add_flag("!--no-profile", o.profile, "Skip the per-kernel-group profile of each row");
  p->callback([&exit_code] { exit_code = RunPrefill(o); });
}

}  // namespace resa
