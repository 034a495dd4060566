#include "runtime/apps/attention_bench.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/selection.h"
#include "runtime/apps/model_loading.h"
#include "runtime/core/sysinfo.h"
#include "runtime/engine/synthetic_model.h"

namespace resa {
namespace {

struct Options {
  std::vector<std::string> shapes = {"smollm2-135m", "r1-qwen-1.5b"};
  std::vector<int> contexts = {4096, 16384, 32768};
  float sparse_ratio = 0.1f;
  int min_blocks = 16;
  int rectify_every = 32;
  int repeats = 20;
  int threads = 0;
};

// Median seconds of `repeats` runs of fn.
template <typename Fn>
double Median(int repeats, Fn&& fn) {
  std::vector<double> t;
  fn();  // warm-up
  for (int i = 0; i < repeats; ++i) {
    Stopwatch sw;
    fn();
    t.push_back(sw.Seconds());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int Run(const Options& o) {
  const int threads = ConfigureThreads(o.threads);
  std::printf("| shape | ctx | dense us | selection us | sparse attn us | rectify/f us | ReSA us | "
              "sparse x | ReSA x | selection share |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const std::string& shape : o.shapes) {
    auto cfg = SyntheticConfig(shape);
    if (!cfg.ok()) {
      std::fprintf(stderr, "error: %s\n", std::string(cfg.status().message()).c_str());
      return 1;
    }
    const int hkv = cfg->num_kv_heads, d = cfg->head_dim, hq = cfg->num_heads, g = hq / hkv;
    for (int ctx : o.contexts) {
      // One layer's cache of `ctx` random keys; pages in a shuffled order like a real pool.
      const int32_t pages = (ctx + kPageTokens - 1) / kPageTokens;
      const size_t page_elems = size_t(hkv) * kPageTokens * d;
      std::unique_ptr<float[]> k(new float[page_elems * pages]), v(new float[page_elems * pages]),
          s(new float[size_t(pages) * hkv * 2 * d]);
      PagedKvLayer kv{k.get(), v.get(), s.get(), hkv, d};
      std::vector<int32_t> table(pages);
      std::iota(table.begin(), table.end(), 0);
      std::mt19937 rng(1);
      std::shuffle(table.begin(), table.end(), rng);
      std::normal_distribution<float> nd;
      std::vector<float> kt(size_t(hkv) * d), vt(kt.size());
      for (int t = 0; t < ctx; ++t) {
        for (auto& x : kt) x = nd(rng);
        for (auto& x : vt) x = nd(rng);
        WriteTokenKv(kv, table[t / kPageTokens], t % kPageTokens, kt.data(), vt.data());
      }
      std::vector<float> q(size_t(hq) * d), out(q.size());
      for (auto& x : q) x = nd(rng);
      const AttentionParams p{hq, 1.0f / std::sqrt(float(d))};
      AttentionRow dense_row{table.data(), ctx};
      const double dense = Median(o.repeats, [&] {
        PagedAttention(kv, p, q.data(), {&dense_row, 1}, out.data(), nullptr);
      });
      const int32_t m = pages;
      const int32_t n = NumSelectedBlocks(m, o.sparse_ratio, o.min_blocks);
      std::vector<float> pooled(size_t(hkv) * d), scores(size_t(hkv) * m);
      std::vector<int32_t> sel(size_t(hkv) * n);
      const double selection = Median(o.repeats, [&] {
        for (int h = 0; h < hkv; ++h) {
          for (int i = 0; i < d; ++i) {
            float acc = 0.0f;
            for (int j = 0; j < g; ++j) acc += q[(size_t(h) * g + j) * d + i];
            pooled[size_t(h) * d + i] = acc / float(g);
          }
        }
        ScoreBlocks(kv, pooled.data(), table.data(), ctx, scores.data());
        TopBlocks(scores.data(), hkv, m, n, sel.data());
      });
      AttentionRow sparse_row{table.data(), ctx, true, sel.data(), n, n};
      const double sparse = Median(o.repeats, [&] {
        PagedAttention(kv, p, q.data(), {&sparse_row, 1}, out.data(), nullptr);
      });
      const int f = o.rectify_every;
      std::vector<float> qc(size_t(f) * hq * d), oc(qc.size());
      for (auto& x : qc) x = nd(rng);
      const double rect = Median(std::max(3, o.repeats / 4), [&] {
        PagedChunkAttention(kv, p, qc.data(), f, table.data(), ctx - f + 1, oc.data(), nullptr);
      });
      const double resa = selection + sparse + rect / f;
      std::printf(
          "{\"bench\":\"attention_cpu\",\"shape\":\"%s\",\"context\":%d,\"threads\":%d,"
          "\"q_heads\":%d,\"kv_heads\":%d,\"head_dim\":%d,\"blocks\":%d,\"selected\":%d,"
          "\"dense_us\":%.1f,\"selection_us\":%.1f,\"sparse_attention_us\":%.1f,"
          "\"rectification_chunk_us\":%.1f,\"resa_step_us\":%.1f,\"sparse_speedup\":%.2f,"
          "\"resa_speedup\":%.2f,\"selection_share_of_sparse\":%.3f}\n",
          shape.c_str(), ctx, threads, hq, hkv, d, m, n, dense * 1e6, selection * 1e6,
          sparse * 1e6, rect * 1e6, resa * 1e6, dense / (selection + sparse), dense / resa,
          selection / sparse);
      std::fprintf(stderr, "| %s | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.2f | %.2f | %.0f%% |\n",
                   shape.c_str(), ctx, dense * 1e6, selection * 1e6, sparse * 1e6,
                   rect * 1e6 / f, resa * 1e6, dense / (selection + sparse), dense / resa,
                   100.0 * selection / sparse);
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace

void AddAttentionBenchCommand(CLI::App& app, int& exit_code) {
  static Options o;
  CLI::App* cmd = app.add_subcommand(
      "attention", "CPU decode attention per layer: dense vs sparse vs ReSA (same run)");
  cmd->add_option("--shapes", o.shapes, "Synthetic shapes (tiny, smollm2-135m, r1-qwen-1.5b, r1-qwen-7b)")
      ->capture_default_str()
      ->delimiter(',');
  cmd->add_option("--contexts", o.contexts, "Context lengths")->capture_default_str()->delimiter(',');
  cmd->add_option("--sparse-ratio", o.sparse_ratio, "Kept fraction of blocks")->capture_default_str();
  cmd->add_option("--min-blocks", o.min_blocks, "n_min")->capture_default_str();
  cmd->add_option("--rectify-every", o.rectify_every, "f")->capture_default_str();
  cmd->add_option("--repeats", o.repeats, "Timed repetitions (median)")->capture_default_str();
  cmd->add_option("-t,--threads", o.threads, "CPU threads; 0 = all cores")->capture_default_str();
  cmd->callback([&exit_code] { exit_code = Run(o); });
}

}  // namespace resa
