#include "runtime/apps/math_command.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/apps/generate_command.h"
#include "runtime/apps/model_loading.h"
#include "runtime/engine/decoder.h"
#include "runtime/eval/math_data.h"
#include "runtime/eval/math_eval.h"
#include "runtime/eval/math_generator.h"
#include "runtime/eval/math_summary.h"

namespace resa {

namespace {

int Fail(const char* cmd, const std::string& msg) {
  std::fprintf(stderr, "resa-eval %s: error: %s\n", cmd, msg.c_str());
  return 1;
}
int Fail(const char* cmd, const absl::Status& st) { return Fail(cmd, std::string(st.message())); }

// Prints the table of `dir` (stdout) and writes summary.md and summary.csv into it.
int PrintSummary(const char* cmd, const std::string& dir, const SummaryOptions& options,
                 const std::string& format) {
  auto summary = SummarizeMathDir(dir, options);
  if (!summary.ok()) return Fail(cmd, summary.status());
  const std::string md = SummaryMarkdown(*summary), csv = SummaryCsv(*summary);
  if (format != "csv") std::printf("%s", md.c_str());
  if (format == "both") std::printf("\n");
  if (format != "md") std::printf("%s", csv.c_str());
  std::ofstream(std::filesystem::path(dir) / "summary.md") << md;
  std::ofstream(std::filesystem::path(dir) / "summary.csv") << csv;
  return 0;
}

}  // namespace

void AddMathCommands(CLI::App& app, MathCommandOptions& o, MathSummaryCommandOptions& s,
                     int& exit_code) {
  CLI::App* cmd = app.add_subcommand(
      "math", "Math benchmarks: generate, extract \\boxed answers, grade; dense / sparse / ReSA");
  cmd->add_option("-m,--model", o.model, "Model: GGUF file, HF directory or cached name")
      ->capture_default_str();
  cmd->add_option("--data", o.data, "Directory with <dataset>/test.jsonl")->required();
  cmd->add_option("--datasets", o.datasets,
                  "Comma-separated, each name or name:N (its first N problems, overriding --limit): " +
                      absl::StrJoin(KnownMathDatasets(), ", "))
      ->capture_default_str()
      ->delimiter(',');
  cmd->add_option("--modes", o.modes, "Comma-separated decode modes: dense, sparse, resa")
      ->capture_default_str()
      ->delimiter(',');
  cmd->add_option("--limit", o.limit, "Problems per dataset (the first N); 0 = all")
      ->capture_default_str();
  cmd->add_option("--samples", o.samples, "Generations per problem (seeds differ)")
      ->capture_default_str();
  cmd->add_option("-n,--max-new-tokens", o.max_new_tokens, "Generated tokens at most")
      ->capture_default_str();
  cmd->add_option("--prompt", o.prompt,
                  "r1 (\"Please reason step by step...\" + question + \"<think>\", §6.3) or "
                  "chat (the same instruction as a chat-template user turn)")
      ->capture_default_str();
  cmd->add_option("--temperature", o.temperature, "Sampling temperature; 0 = greedy")
      ->capture_default_str();
  cmd->add_option("--top-p", o.top_p, "Nucleus sampling mass")->capture_default_str();
  cmd->add_option("--top-k", o.top_k, "Top-k sampling; 0 = no limit")->capture_default_str();
  cmd->add_option("--seed", o.seed, "Base seed: problem i, sample s uses seed + i*samples + s")
      ->capture_default_str();
  AddSparseFlags(*cmd, o.sparse_ratio, o.min_blocks, o.rectify_every);
  cmd->add_option("--batch", o.batch, "Sequences decoded together (streams with --server)")
      ->capture_default_str();
  cmd->add_option("-t,--threads", o.threads, "CPU threads; 0 = all cores")->capture_default_str();
  cmd->add_option("--prefill-chunk", o.prefill_chunk, "Prompt tokens per prefill step")
      ->capture_default_str();
  cmd->add_option("--out", o.out, "Output directory (resumed when it holds this run)")
      ->capture_default_str();
  cmd->add_option("--server", o.server, "host:port of a resa coordinator (instead of in-process)");
  cmd->add_option("--timeout", o.timeout, "Seconds per generation with --server; 0 = none")
      ->capture_default_str();
  cmd->add_option("--stop-after", o.stop_after,
                  "Stop after N generations, as an interruption would (tests resume); 0 = no");
  cmd->add_flag("-q,--quiet", o.quiet, "No progress lines");
  cmd->callback([&o, &exit_code] { exit_code = RunMath(o); });

  CLI::App* sum = app.add_subcommand(
      "math-summary", "Paper-style table (accuracy per dataset, Avg, length) of a math --out dir");
  sum->add_option("out,--out", s.out, "Output directory of `resa-eval math`")->required();
  sum->add_flag("--regrade", s.regrade, "Re-extract and re-grade outputs with this build's grader");
  sum->add_flag("--paired", s.paired,
                "Count only problems every mode has (compare modes on the same problems)");
  sum->add_option("--format", s.format, "md, csv or both")->capture_default_str();
  sum->callback([&s, &exit_code] { exit_code = RunMathSummary(s); });
}

int RunMath(const MathCommandOptions& o) {
  constexpr const char* kCmd = "math";
  // Everything that can be checked is checked before the model loads.
  if (o.limit < 0) return Fail(kCmd, absl::StrCat("--limit must be >= 0 (got ", o.limit, ")"));
  if (o.samples < 1) return Fail(kCmd, absl::StrCat("--samples must be >= 1 (got ", o.samples, ")"));
  if (o.max_new_tokens < 1) {
    return Fail(kCmd, absl::StrCat("--max-new-tokens must be >= 1 (got ", o.max_new_tokens, ")"));
  }
  if (o.batch < 1) return Fail(kCmd, absl::StrCat("--batch must be >= 1 (got ", o.batch, ")"));
  if (o.stop_after < 0) return Fail(kCmd, "--stop-after must be >= 0");
  if (o.prefill_chunk < 1) return Fail(kCmd, "--prefill-chunk must be >= 1");
  if (o.modes.empty()) return Fail(kCmd, "--modes is empty (known: dense, sparse, resa)");
  MathEvalOptions e;
  for (const std::string& m : o.modes) {
    auto mode = ParseDecodeMode(m);
    if (!mode.ok()) {
      return Fail(kCmd, absl::StrCat("--modes: unknown mode '", m, "' (known: dense, sparse, resa)"));
    }
    if (std::find(e.modes.begin(), e.modes.end(), *mode) == e.modes.end()) e.modes.push_back(*mode);
  }
  const ResaOptions resa{DecodeMode::kResa, o.sparse_ratio, o.min_blocks, o.rectify_every};
  if (absl::Status st = resa.Validate(); !st.ok()) return Fail(kCmd, st);
  const SamplingParams sampling{o.temperature, o.top_k, o.top_p, o.seed};
  if (absl::Status st = sampling.Validate(); !st.ok()) return Fail(kCmd, st);
  auto tmpl = ParsePromptTemplate(o.prompt);
  if (!tmpl.ok()) return Fail(kCmd, tmpl.status());
  std::error_code ec;
  if (!std::filesystem::is_directory(o.data, ec)) {
    return Fail(kCmd, absl::StrCat("--data ", o.data, ": no such directory"));
  }
  if (o.datasets.empty()) return Fail(kCmd, "--datasets is empty");
  const auto& known = KnownMathDatasets();
  for (const std::string& spec : o.datasets) {
    // "name" or "name:N" (the first N problems of that dataset, overriding --limit).
    const size_t colon = spec.find(':');
    const std::string d = spec.substr(0, colon);
    int limit = 0;
    if (colon != std::string::npos) {
      const std::string n = spec.substr(colon + 1);
      if (n.empty() || n.size() > 9 || n.find_first_not_of("0123456789") != std::string::npos) {
        return Fail(kCmd, absl::StrCat("--datasets: '", spec, "': expected name or name:N, N >= 0"));
      }
      limit = std::stoi(n);
    }
    if (std::find(known.begin(), known.end(), d) == known.end()) {
      return Fail(kCmd, absl::StrCat("--datasets: unknown dataset '", d,
                                     "' (known: ", absl::StrJoin(known, ", "), ")"));
    }
    const auto file = std::filesystem::path(o.data) / d / "test.jsonl";
    if (!std::filesystem::exists(file, ec)) {
      return Fail(kCmd, absl::StrCat("--data ", o.data, ": no ", d, "/test.jsonl"));
    }
    e.datasets.push_back(d);
    e.dataset_limits.push_back(limit);
  }
  e.data_dir = o.data;
  e.limit = o.limit;
  e.samples = o.samples;
  e.max_new_tokens = o.max_new_tokens;
  e.prompt = *tmpl;
  e.temperature = o.temperature;
  e.top_p = o.top_p;
  e.top_k = o.top_k;
  e.seed = o.seed;
  e.sparse_ratio = o.sparse_ratio;
  e.min_blocks = o.min_blocks;
  e.rectify_every = o.rectify_every;
  e.out_dir = o.out;
  e.progress = !o.quiet;
  e.stop_after = o.stop_after;

  LoadedModel model;  // in-process only; outlives `gen`, which refers to it
  std::unique_ptr<MathGenerator> gen;
  if (!o.server.empty()) {
    auto g = MakeServerGenerator(ServerGeneratorOptions{o.server, o.batch, o.timeout});
    if (!g.ok()) return Fail(kCmd, g.status());
    gen = *std::move(g);
    e.model = o.server;
  } else {
    ConfigureThreads(o.threads);
    auto m = LoadModel(o.model, LoadOptions{.progress = !o.quiet});
    if (!m.ok()) return Fail(kCmd, m.status());
    model = *std::move(m);
    if (model.tokenizer == nullptr) return Fail(kCmd, "--model: the model has no tokenizer");
    gen = MakeCpuGenerator(*model.weights, *model.tokenizer,
                           CpuGeneratorOptions{o.batch, o.prefill_chunk});
    e.model = std::filesystem::path(model.path).filename().string();
  }
  auto stats = RunMathEval(e, *gen);
  if (!stats.ok()) return Fail(kCmd, stats.status());
  if (o.stop_after > 0 && stats->generated >= o.stop_after) {
    std::fprintf(stderr, "stopped after %d generations (--stop-after); rerun to resume\n",
                 stats->generated);
    return 0;
  }
  return PrintSummary(kCmd, o.out, SummaryOptions{}, "md");
}

int RunMathSummary(const MathSummaryCommandOptions& o) {
  if (o.format != "md" && o.format != "csv" && o.format != "both") {
    return Fail("math-summary", absl::StrCat("--format must be md, csv or both (got '", o.format,
                                             "')"));
  }
  return PrintSummary("math-summary", o.out,
                      SummaryOptions{.regrade = o.regrade, .paired = o.paired}, o.format);
}

}  // namespace resa
