#include "runtime/apps/fidelity.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "runtime/apps/generate_command.h"
#include "runtime/apps/model_loading.h"
#include "runtime/core/sysinfo.h"
#include "runtime/engine/decoder.h"
#include "runtime/engine/sampler.h"

namespace resa {

void AddFidelityCommand(CLI::App& app, FidelityOptions& o, int& exit_code) {
  CLI::App* cmd = app.add_subcommand(
      "fidelity", "Decode real text in dense, sparse and ReSA modes and compare with dense");
  cmd->add_option("-m,--model", o.model, "Model: GGUF file, HF directory or cached name")
      ->capture_default_str();
  cmd->add_option("--text", o.text, "UTF-8 text file (prompt and continuation)")->required();
  cmd->add_option("--prompt-tokens", o.prompt_tokens, "Prompt length N")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 22));
  cmd->add_option("--decode-tokens", o.decode_tokens, "Decoded positions G per mode")
      ->capture_default_str()
      ->check(CLI::Range(2, 1 << 20));
  cmd->add_option("--offset-tokens", o.offset_tokens, "Skip this many tokens of the text first")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 24));
  cmd->add_option("--out", o.out, "Output directory (fidelity.json, fidelity.png)")
      ->capture_default_str();
  cmd->add_option("--modes", o.modes, "Modes to compare (dense is always included)")
      ->capture_default_str()
      ->delimiter(',')
      ->check(CLI::IsMember({"dense", "sparse", "resa"}));
  AddSparseFlags(*cmd, o.sparse_ratio, o.min_blocks, o.rectify_every);
  cmd->add_option("-t,--threads", o.threads, "CPU threads; 0 = all cores")->capture_default_str();
  cmd->add_option("--prefill-chunk", o.prefill_chunk, "Prompt tokens per prefill step")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_flag("!--no-plot", o.plot, "Skip fidelity.png (gnuplot)");
  cmd->callback([&o, &exit_code] { exit_code = RunFidelity(o); });
}

namespace {

int Fail(const std::string& msg) {
  std::fprintf(stderr, "resa-eval fidelity: error: %s\n", msg.c_str());
  return 1;
}

// log-softmax of logits into out.
void LogSoftmax(const float* logits, int n, std::vector<double>& out) {
  out.resize(n);
  double mx = logits[0];
  for (int i = 1; i < n; ++i) mx = std::max(mx, double(logits[i]));
  double sum = 0.0;
  for (int i = 0; i < n; ++i) sum += std::exp(double(logits[i]) - mx);
  const double lse = mx + std::log(sum);
  for (int i = 0; i < n; ++i) out[i] = double(logits[i]) - lse;
}

double Kl(const std::vector<double>& logp, const std::vector<double>& logq) {
  double kl = 0.0;
  for (size_t i = 0; i < logp.size(); ++i) {
    const double p = std::exp(logp[i]);
    if (p > 0.0) kl += p * (logp[i] - logq[i]);
  }
  return std::max(0.0, kl);
}

struct Track {
  std::string setting;  // teacher_forced / free_running
  std::string mode;
  int id = -1;
  std::vector<double> kl, nll;
  std::vector<int> agree;
  std::vector<int32_t> tokens;  // tokens fed (free-running: own greedy tokens)
};

double Mean(const std::vector<double>& v, size_t lo, size_t hi) {
  if (hi <= lo) return 0.0;
  double s = 0.0;
  for (size_t i = lo; i < hi; ++i) s += v[i];
  return s / double(hi - lo);
}
double MeanInt(const std::vector<int>& v, size_t lo, size_t hi) {
  std::vector<double> d(v.begin(), v.end());
  return Mean(d, lo, hi);
}

bool WritePlot(const std::filesystem::path& dir, const std::vector<Track>& tracks) {
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) return false;
  // One data file per track: position, and KL and top-1 agreement averaged over the trailing
  // 32 positions (single positions are too noisy to read a trend from).
  std::ostringstream script;
  script << "set terminal pngcairo noenhanced size 1400,900 font ',11'\n"
         << "set output '" << (dir / "fidelity.png").string() << "'\n"
         << "set multiplot layout 2,2\nset grid\nset key top left\n";
  for (const char* setting : {"teacher_forced", "free_running"}) {
    for (int metric = 0; metric < 2; ++metric) {
      script << "set title '" << (metric == 0 ? "KL(dense || mode)" : "top-1 agreement with dense")
             << " - " << setting << " (mean of the last 32 positions)'\n"
             << "set xlabel 'decode position'\n"
             << (metric == 0 ? "set logscale y\nset yrange [1e-6:*]\n" : "unset logscale y\nset yrange [0:1.05]\n")
             << "plot ";
      bool first = true;
      for (const Track& t : tracks) {
        if (t.setting != setting || t.mode == "dense") continue;
        const std::string data = (dir / ("plot_" + t.setting + "_" + t.mode + ".dat")).string();
        std::ofstream f(data);
        for (size_t i = 0; i < t.kl.size(); ++i) {
          const size_t lo = i >= 31 ? i - 31 : 0;
          f << i << " " << std::max(Mean(t.kl, lo, i + 1), 1e-7) << " "
            << MeanInt(t.agree, lo, i + 1) << "\n";
        }
        script << (first ? "" : ", ") << "'" << data << "' using 1:" << (metric == 0 ? 2 : 3)
               << " with lines lw 2 title '" << t.mode << "'";
        first = false;
      }
      script << "\n";
    }
  }
  script << "unset multiplot\n";
  const std::string gp = (dir / "fidelity.gnuplot").string();
  std::ofstream(gp) << script.str();
  return std::system(("gnuplot '" + gp + "'").c_str()) == 0;
}

}  // namespace

int RunFidelity(const FidelityOptions& o) {
  std::vector<DecodeMode> modes = {DecodeMode::kDense};
  for (const std::string& m : o.modes) {
    auto mode = ParseDecodeMode(m);
    if (!mode.ok()) return Fail(std::string(mode.status().message()));
    if (std::find(modes.begin(), modes.end(), *mode) == modes.end()) modes.push_back(*mode);
  }
  std::ifstream in(o.text, std::ios::binary);
  if (!in) return Fail("--text " + o.text + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  const int threads = ConfigureThreads(o.threads);
  auto model = LoadModel(o.model, LoadOptions{});
  if (!model.ok()) return Fail(std::string(model.status().message()));
  const ModelConfig& cfg = model->weights->config;
  auto ids = model->tokenizer->Encode(ss.str(), EncodeOptions{.add_bos = false, .parse_special = false});
  if (!ids.ok()) return Fail(o.text + ": " + std::string(ids.status().message()));
  const int64_t need = int64_t(o.offset_tokens) + o.prompt_tokens + o.decode_tokens;
  if (int64_t(ids->size()) < need) {
    return Fail(absl::StrFormat("%s has %d tokens; --offset-tokens + --prompt-tokens + "
                                "--decode-tokens need %d",
                                o.text, ids->size(), need));
  }
  const std::span<const int32_t> prompt(ids->data() + o.offset_tokens, size_t(o.prompt_tokens));
  const std::span<const int32_t> cont(prompt.data() + o.prompt_tokens, size_t(o.decode_tokens));

  const int nseq = int(modes.size()) * 2 + 1;  // + the prefill sequence the others fork from
  const int32_t pages_per_seq = (o.prompt_tokens + o.decode_tokens + kPageTokens) / kPageTokens;
  auto cache = KvCache::Create(cfg, pages_per_seq * nseq);
  if (!cache.ok()) return Fail(std::string(cache.status().message()));
  CpuModel cpu(*model->weights, **cache);
  Decoder dec(cpu, **cache);
  std::fprintf(stderr, "prefilling %d prompt tokens (%s, %d threads)...\n", o.prompt_tokens,
               cfg.model_name.c_str(), threads);
  Stopwatch total;
  auto root = dec.Start(prompt, ResaOptions{.mode = DecodeMode::kDense}, o.prefill_chunk);
  if (!root.ok()) return Fail(std::string(root.status().message()));
  std::fprintf(stderr, "prefill: %.1fs (%.1f tok/s)\n", total.Seconds(),
               o.prompt_tokens / total.Seconds());

  std::vector<Track> tracks;
  for (const char* setting : {"teacher_forced", "free_running"}) {
    for (DecodeMode m : modes) {
      ResaOptions ro{m, o.sparse_ratio, o.min_blocks, o.rectify_every};
      if (absl::Status st = ro.Validate(); !st.ok()) return Fail(std::string(st.message()));
      auto id = dec.Fork(*root, ro);
      if (!id.ok()) return Fail(std::string(id.status().message()));
      tracks.push_back(Track{setting, DecodeModeName(m), *id});
    }
  }
  dec.Finish(*root);
  const int vocab = cfg.vocab_size;
  std::vector<double> ref_logp, logp;
  Stopwatch sw;
  for (int pos = 0; pos < o.decode_tokens; ++pos) {
    // Score position `pos` (logits after feeding pos tokens) against dense of the same setting.
    for (const char* setting : {"teacher_forced", "free_running"}) {
      const Track* dense = nullptr;
      for (const Track& t : tracks) {
        if (t.setting == setting && t.mode == "dense") dense = &t;
      }
      LogSoftmax(dec.logits(dense->id), vocab, ref_logp);
      const int32_t ref_top = ArgMax(dec.logits(dense->id), vocab);
      for (Track& t : tracks) {
        if (t.setting != setting) continue;
        LogSoftmax(dec.logits(t.id), vocab, logp);
        const int32_t top = ArgMax(dec.logits(t.id), vocab);
        const int32_t next = t.setting == std::string("teacher_forced") ? cont[pos] : top;
        t.kl.push_back(Kl(ref_logp, logp));
        t.agree.push_back(top == ref_top ? 1 : 0);
        t.nll.push_back(-logp[next]);
        t.tokens.push_back(next);
      }
    }
    if (pos + 1 == o.decode_tokens) break;
    std::vector<Decoder::Feed> feeds;
    for (const Track& t : tracks) feeds.push_back({t.id, t.tokens.back()});
    if (absl::Status st = dec.Step(feeds); !st.ok()) return Fail(std::string(st.message()));
    if ((pos + 1) % 16 == 0 || pos + 2 == o.decode_tokens) {
      const double el = sw.Seconds();
      const double eta = el / (pos + 1) * (o.decode_tokens - pos - 2);
      std::fprintf(stderr, "\rdecode %d/%d positions, %.1fs elapsed, ETA %.0fs   ", pos + 2,
                   o.decode_tokens, el, eta);
    }
  }
  std::fprintf(stderr, "\n");

  nlohmann::json out;
  out["model"] = model->path;
  out["model_name"] = cfg.model_name;
  out["text"] = o.text;
  out["prompt_tokens"] = o.prompt_tokens;
  out["decode_tokens"] = o.decode_tokens;
  out["offset_tokens"] = o.offset_tokens;
  out["resa"] = {{"sparse_ratio", o.sparse_ratio},
                 {"min_blocks", o.min_blocks},
                 {"rectify_every", o.rectify_every}};
  out["threads"] = threads;
  out["seconds"] = total.Seconds();
  const size_t g = size_t(o.decode_tokens), q = std::max<size_t>(1, g / 4);
  std::printf("\n| setting | mode | mean KL | KL first 1/4 | KL last 1/4 | top-1 agree | "
              "agree last 1/4 | perplexity | blocks read | rectifications |\n"
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const Track& t : tracks) {
    const SequenceReport& r = dec.report(t.id);
    nlohmann::json j;
    j["mean_kl"] = Mean(t.kl, 0, g);
    j["mean_kl_first_quarter"] = Mean(t.kl, 0, q);
    j["mean_kl_last_quarter"] = Mean(t.kl, g - q, g);
    j["mean_top1_agreement"] = MeanInt(t.agree, 0, g);
    j["top1_agreement_last_quarter"] = MeanInt(t.agree, g - q, g);
    j["perplexity"] = std::exp(Mean(t.nll, 0, g));
    j["kl"] = t.kl;
    j["top1_agree"] = t.agree;
    j["nll"] = t.nll;
    j["blocks_read"] = r.blocks_read;
    j["blocks_total"] = r.blocks_total;
    j["rectifications"] = r.rectifications;
    out["settings"][t.setting][t.mode] = j;
    std::printf("| %s | %s | %.5f | %.5f | %.5f | %.3f | %.3f | %.3f | %.1f%% | %d |\n",
                t.setting.c_str(), t.mode.c_str(), Mean(t.kl, 0, g), Mean(t.kl, 0, q),
                Mean(t.kl, g - q, g), MeanInt(t.agree, 0, g), MeanInt(t.agree, g - q, g),
                std::exp(Mean(t.nll, 0, g)),
                r.blocks_total > 0 ? 100.0 * r.blocks_read / r.blocks_total : 100.0,
                r.rectifications);
  }
  std::error_code ec;
  std::filesystem::create_directories(o.out, ec);
  if (ec) return Fail("--out " + o.out + ": " + ec.message());
  const std::filesystem::path dir(o.out);
  std::ofstream(dir / "fidelity.json") << out.dump(1) << "\n";
  std::fprintf(stderr, "wrote %s\n", (dir / "fidelity.json").c_str());
  if (o.plot) {
    if (WritePlot(dir, tracks)) {
      std::fprintf(stderr, "wrote %s\n", (dir / "fidelity.png").c_str());
    } else {
      std::fprintf(stderr, "note: gnuplot not found or failed; no fidelity.png "
                           "(apt-get install gnuplot-nox)\n");
    }
  }
  return 0;
}

}  // namespace resa
