// resa-bench: benchmarks that always print their baseline from the same run.
//
//   resa-bench generate   CPU prefill and decode tokens/s at several contexts, bytes read per
//                         decoded token, and that traffic rate against the memory-copy ceiling.
//   resa-bench attention  CPU decode attention per layer: dense vs sparse vs ReSA.
//   resa-bench kernels    GPU attention kernels vs the device copy ceiling and PyTorch SDPA.
//   resa-bench comm       Per-phase communication of a TP x SP decode step (under mpirun).
#include <cstdio>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_format.h"
#include "runtime/apps/attention_bench.h"
#include "runtime/apps/bench_util.h"
#include "runtime/apps/comm_bench.h"
#include "runtime/apps/e2e_bench.h"
#include "runtime/apps/kernels_bench.h"
#include "runtime/apps/model_loading.h"
#include "runtime/apps/prefill_bench.h"
#include "runtime/apps/process_setup.h"
#include "runtime/core/sysinfo.h"
#include "runtime/engine/cpu_model.h"
#include "runtime/engine/kv_cache.h"
#include "runtime/engine/sampler.h"

namespace resa {
namespace {

struct GenerateBenchOptions {
  std::string model = "default";
  std::vector<int> contexts = {512, 4096};
  int decode_tokens = 32;
  int prefill_chunk = 512;
  int threads = 0;
};

int RunGenerateBench(const GenerateBenchOptions& o) {
  const int threads = ConfigureThreads(o.threads);
  auto model = LoadModel(o.model, LoadOptions{.progress = true, .need_tokenizer = false});
  if (!model.ok()) {
    std::fprintf(stderr, "resa-bench generate: error: %s\n",
                 std::string(model.status().message()).c_str());
    return 1;
  }
  const ModelConfig& cfg = model->weights->config;
  const MemoryCeiling ceiling = MeasureMemoryCeiling();
  std::printf("{\"bench\":\"memory_ceiling\",\"threads\":%d,\"copy_GBps\":%.2f,\"read_GBps\":%.2f}\n",
              threads, ceiling.copy_gbps, ceiling.read_gbps);
  const uint64_t weight_bytes = model->weights->DecodeBytes();
  const uint64_t kv_bytes_per_token = 2ull * cfg.num_layers * cfg.kv_dim() * sizeof(float);
  std::vector<std::string> table;
  for (int ctx : o.contexts) {
    const int32_t pages = (ctx + o.decode_tokens + kPageTokens) / kPageTokens + 1;
    auto cache = KvCache::Create(cfg, pages);
    if (!cache.ok()) {
      std::fprintf(stderr, "error: %s\n", std::string(cache.status().message()).c_str());
      return 1;
    }
    CpuModel m(*model->weights, **cache);
    SequenceKv seq;
    std::vector<int32_t> prompt(ctx);
    for (int i = 0; i < ctx; ++i) prompt[i] = (i * 7919 + 13) % cfg.vocab_size;
    std::vector<float> logits(cfg.vocab_size);
    Stopwatch sw;
    for (int s = 0; s < ctx; s += o.prefill_chunk) {
      const int n = std::min(o.prefill_chunk, ctx - s);
      ForwardChunk c{&seq, {prompt.data() + s, size_t(n)},
                     s + n == ctx ? LogitsMode::kLast : LogitsMode::kNone};
      if (auto st = m.Forward({&c, 1}, logits.data()); !st.ok()) {
        std::fprintf(stderr, "error: %s\n", std::string(st.message()).c_str());
        return 1;
      }
    }
    const double prefill_s = sw.Seconds();
    int32_t tok = ArgMax(logits.data(), cfg.vocab_size);
    sw.Reset();
    for (int i = 0; i < o.decode_tokens; ++i) {
      ForwardChunk c{&seq, {&tok, 1}, LogitsMode::kLast};
      if (auto st = m.Forward({&c, 1}, logits.data()); !st.ok()) {
        std::fprintf(stderr, "error: %s\n", std::string(st.message()).c_str());
        return 1;
      }
      tok = ArgMax(logits.data(), cfg.vocab_size);
    }
    const double decode_s = sw.Seconds();
    const double per_token = decode_s / o.decode_tokens;
    // KV read by the average decode step (context grows during the run).
    const double kv_read = double(kv_bytes_per_token) * (ctx + o.decode_tokens / 2.0);
    const double bytes = double(weight_bytes) + kv_read;
    const double gbps = bytes / per_token / 1e9;
    std::printf(
        "{\"bench\":\"generate\",\"model\":\"%s\",\"context\":%d,\"threads\":%d,"
        "\"prefill_tokens_per_s\":%.1f,\"decode_tokens_per_s\":%.2f,\"decode_ms\":%.2f,"
        "\"weight_bytes_per_token\":%llu,\"kv_bytes_per_token\":%.0f,\"achieved_GBps\":%.2f,"
        "\"copy_ceiling_GBps\":%.2f,\"ratio_to_copy_ceiling\":%.3f,"
        "\"ratio_to_read_ceiling\":%.3f}\n",
        cfg.model_name.c_str(), ctx, threads, ctx / prefill_s, 1.0 / per_token, per_token * 1e3,
        static_cast<unsigned long long>(weight_bytes), kv_read, gbps, ceiling.copy_gbps,
        gbps / ceiling.copy_gbps, gbps / ceiling.read_gbps);
    table.push_back(absl::StrFormat("| %6d | %9.1f | %8.2f | %8.1f | %7.2f | %5.0f%% |", ctx,
                                    ctx / prefill_s, 1.0 / per_token, bytes / 1e6, gbps,
                                    100.0 * gbps / ceiling.copy_gbps));
    std::fflush(stdout);
  }
  std::fprintf(stderr,
               "\nmodel %s, %d threads, copy ceiling %.2f GB/s (read %.2f GB/s)\n"
               "|    ctx | prefill/s | decode/s | MB/token |    GB/s | ceil  |\n"
               "|-------:|----------:|---------:|---------:|--------:|------:|\n",
               cfg.model_name.c_str(), threads, ceiling.copy_gbps, ceiling.read_gbps);
  for (const auto& row : table) std::fprintf(stderr, "%s\n", row.c_str());
  return 0;
}

}  // namespace
}  // namespace resa

int main(int argc, char** argv) {
  resa::DefaultOpenMpWaitPolicy(argv);
  CLI::App app{"resa-bench: benchmarks with their baselines from the same run (JSON lines)"};
  app.require_subcommand(1);
  int exit_code = 0;
  resa::GenerateBenchOptions gen;
  CLI::App* g = app.add_subcommand("generate", "CPU prefill/decode speed vs the memory ceiling");
  g->add_option("-m,--model", gen.model, "Model (file, directory, alias, synthetic:<shape>)")
      ->capture_default_str();
  g->add_option("--contexts", gen.contexts, "Context lengths")->capture_default_str()->delimiter(',');
  g->add_option("--decode-tokens", gen.decode_tokens, "Decode steps timed per context")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  g->add_option("--prefill-chunk", gen.prefill_chunk, "Prompt tokens per prefill step")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  g->add_option("-t,--threads", gen.threads, "CPU threads; 0 = all cores")->capture_default_str();
  g->callback([&] { exit_code = resa::RunGenerateBench(gen); });
  resa::AddAttentionBenchCommand(app, exit_code);
  resa::AddKernelsBenchCommand(app, exit_code);
  resa::AddCommBenchCommand(app, exit_code);
  resa::AddE2eBenchCommand(app, exit_code);
  resa::AddPrefillBenchCommand(app, exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return exit_code;
}
