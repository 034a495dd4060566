#include "runtime/eval/math_eval.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/core/status.h"
#include "runtime/core/sysinfo.h"
#include "runtime/eval/math_answer.h"

namespace resa {

namespace {

namespace fs = std::filesystem;

const char* PromptName(PromptTemplate t) { return t == PromptTemplate::kR1 ? "r1" : "chat"; }

struct Item {
  const MathProblem* problem;
  int sample;
  DecodeMode mode;
  uint64_t seed;
};

std::string FormatDuration(double s) {
  if (s < 0 || !std::isfinite(s)) return "?";
  const int64_t t = int64_t(s + 0.5);
  if (t >= 3600) return absl::StrFormat("%dh%02dm", t / 3600, (t / 60) % 60);
  if (t >= 60) return absl::StrFormat("%dm%02ds", t / 60, t % 60);
  return absl::StrFormat("%ds", t);
}

// Checks run.json against this run's settings, or writes it for a new run.
absl::Status CheckRunRecord(const MathEvalOptions& o) {
  const fs::path path = fs::path(o.out_dir) / "run.json";
  const nlohmann::json want = RunSettingsJson(o);
  if (fs::exists(path)) {
    std::ifstream in(path);
    nlohmann::json have = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (have.is_discarded()) {
      return absl::FailedPreconditionError(absl::StrCat(path.string(), ": not valid JSON"));
    }
    for (auto it = want.begin(); it != want.end(); ++it) {
      if (!have.contains(it.key()) || have[it.key()] != it.value()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "--out ", o.out_dir, " holds a run with ", it.key(), " = ",
            have.contains(it.key()) ? have[it.key()].dump() : "(unset)", ", this run has ",
            it.value().dump(), "; use another --out or the same settings"));
      }
    }
    return absl::OkStatus();
  }
  std::ofstream out(path);
  out << want.dump(1) << "\n";
  if (!out) return absl::InternalError(absl::StrCat(path.string(), ": cannot write"));
  return absl::OkStatus();
}

nlohmann::json ReportJson(const SequenceReport& r) {
  return {{"decode_steps", r.decode_steps},       {"sparse_steps", r.sparse_steps},
          {"blocks_read", r.blocks_read},         {"blocks_total", r.blocks_total},
          {"rectifications", r.rectifications},   {"rectified_tokens", r.rectified_tokens}};
}

}  // namespace

nlohmann::json RunSettingsJson(const MathEvalOptions& o) {
  return {{"model", o.model},
          {"prompt", PromptName(o.prompt)},
          {"samples", o.samples},
          {"max_new_tokens", o.max_new_tokens},
          {"temperature", o.temperature},
          {"top_p", o.top_p},
          {"top_k", o.top_k},
          {"seed", o.seed},
          {"sparse_ratio", o.sparse_ratio},
          {"min_blocks", o.min_blocks},
          {"rectify_every", o.rectify_every}};
}

absl::StatusOr<std::set<std::pair<int, int>>> LoadFinished(const std::string& path) {
  std::set<std::pair<int, int>> done;
  std::error_code ec;
  if (!fs::exists(path, ec)) return done;
  std::string content;
  {
    std::ifstream in(path, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
    std::stringstream ss;
    ss << in.rdbuf();
    content = ss.str();
  }
  const size_t last_nl = content.rfind('\n');
  const size_t complete = last_nl == std::string::npos ? 0 : last_nl + 1;
  if (complete != content.size()) {
    // An interrupted write left a partial record: drop it so that appending stays valid JSONL.
    fs::resize_file(path, complete, ec);
    if (ec) return absl::InternalError(absl::StrCat(path, ": cannot truncate: ", ec.message()));
    content.resize(complete);
  }
  std::istringstream lines(content);
  std::string line;
  for (int lineno = 1; std::getline(lines, line); ++lineno) {
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.contains("index") || !j.contains("sample")) {
      return absl::DataLossError(
          absl::StrCat(path, ":", lineno, ": not a record of this program (no index/sample)"));
    }
    done.insert({j["index"].get<int>(), j["sample"].get<int>()});
  }
  return done;
}

absl::StatusOr<MathEvalStats> RunMathEval(const MathEvalOptions& o, MathGenerator& gen) {
  if (o.samples < 1) return absl::InvalidArgumentError("--samples must be at least 1");
  if (o.limit < 0) return absl::InvalidArgumentError("--limit must be >= 0");
  std::error_code ec;
  fs::create_directories(o.out_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("--out ", o.out_dir, ": ", ec.message()));
  RESA_RETURN_IF_ERROR(CheckRunRecord(o));

  std::vector<std::vector<MathProblem>> data;
  for (size_t d = 0; d < o.datasets.size(); ++d) {
    RESA_ASSIGN_OR_RETURN(std::vector<MathProblem> problems,
                          LoadMathDataset(o.data_dir, o.datasets[d]));
    const int limit = d < o.dataset_limits.size() && o.dataset_limits[d] > 0
                          ? o.dataset_limits[d]
                          : o.limit;
    if (limit > 0 && int(problems.size()) > limit) problems.resize(size_t(limit));
    data.push_back(std::move(problems));
  }
  const auto file_of = [&](const std::string& dataset, DecodeMode mode) {
    return (fs::path(o.out_dir) / absl::StrCat(dataset, ".", DecodeModeName(mode), ".jsonl"))
        .string();
  };
  MathEvalStats stats;
  std::map<std::string, std::set<std::pair<int, int>>> finished;
  size_t most = 0;
  for (size_t d = 0; d < data.size(); ++d) {
    most = std::max(most, data[d].size());
    for (DecodeMode mode : o.modes) {
      const std::string file = file_of(o.datasets[d], mode);
      RESA_ASSIGN_OR_RETURN(finished[file], LoadFinished(file));
    }
  }
  std::vector<Item> items;
  for (size_t rank = 0; rank < most; ++rank) {
    for (size_t d = 0; d < data.size(); ++d) {
      if (rank >= data[d].size()) continue;
      const MathProblem& p = data[d][rank];
      for (int s = 0; s < o.samples; ++s) {
        for (DecodeMode mode : o.modes) {
          if (finished[file_of(p.dataset, mode)].count({p.index, s}) > 0) {
            ++stats.skipped;
            continue;
          }
          items.push_back(Item{&p, s, mode, o.seed + uint64_t(p.index) * o.samples + s});
        }
      }
    }
  }
  if (o.stop_after > 0 && int(items.size()) > o.stop_after) items.resize(size_t(o.stop_after));
  if (o.progress) {
    std::fprintf(stderr, "math eval: %zu generations to run, %d already done (%s)\n",
                 items.size(), stats.skipped, gen.Describe().c_str());
  }
  if (items.empty()) return stats;

  std::vector<GenerationRequest> requests;
  requests.reserve(items.size());
  for (const Item& it : items) {
    GenerationRequest r;
    r.chat = o.prompt == PromptTemplate::kChat;
    r.prompt = r.chat ? ChatInstruction(it.problem->question) : R1Prompt(it.problem->question);
    r.max_new_tokens = o.max_new_tokens;
    r.sampling = SamplingParams{o.temperature, o.top_k, o.top_p, it.seed};
    r.resa = ResaOptions{it.mode, o.sparse_ratio, o.min_blocks, o.rectify_every};
    RESA_RETURN_IF_ERROR(r.resa.Validate());
    RESA_RETURN_IF_ERROR(r.sampling.Validate());
    requests.push_back(std::move(r));
  }

  std::map<std::string, std::ofstream> files;
  Stopwatch clock;
  int64_t tokens = 0;
  int correct = 0;
  const absl::Status st = gen.Generate(requests, [&](size_t i, GenerationResult res) {
    const Item& it = items[i];
    const MathProblem& p = *it.problem;
    const std::string pred = ExtractAnswer(res.text, p.dataset);
    const bool ok = MathEqual(pred, p.gold);
    nlohmann::json rec = {{"dataset", p.dataset},
                          {"mode", DecodeModeName(it.mode)},
                          {"index", p.index},
                          {"id", p.id},
                          {"sample", it.sample},
                          {"seed", it.seed},
                          {"prompt", requests[i].prompt},
                          {"output", res.text},
                          {"pred", pred},
                          {"gold", p.gold},
                          {"gold_raw", p.gold_raw},
                          {"correct", ok},
                          {"prompt_tokens", res.prompt_tokens},
                          {"generated_tokens", res.generated_tokens},
                          {"finish_reason", res.finish_reason},
                          {"seconds", res.seconds},
                          {"report", ReportJson(res.report)}};
    const std::string file = file_of(p.dataset, it.mode);
    std::ofstream& out = files[file];
    if (!out.is_open()) out.open(file, std::ios::app | std::ios::binary);
    // One write per record, flushed: an interruption loses at most the record being written.
    // Invalid UTF-8 in model output is replaced rather than failing the run.
    out << rec.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    out.flush();
    if (!out) return absl::InternalError(absl::StrCat(file, ": write failed"));
    ++stats.generated;
    tokens += res.generated_tokens;
    correct += ok ? 1 : 0;
    if (o.progress) {
      const double el = clock.Seconds();
      const double eta = el / stats.generated * double(items.size() - stats.generated);
      std::fprintf(stderr,
                   "[%d/%zu] %s #%d %s: %d tokens (%s), %s | %.1f tok/s, elapsed %s, ETA %s\n",
                   stats.generated, items.size(), p.dataset.c_str(), p.index,
                   DecodeModeName(it.mode), res.generated_tokens, res.finish_reason.c_str(),
                   ok ? "correct" : "wrong", tokens / std::max(el, 1e-9),
                   FormatDuration(el).c_str(), FormatDuration(eta).c_str());
    }
    return absl::OkStatus();
  });
  RESA_RETURN_IF_ERROR(st);
  if (o.progress) {
    std::fprintf(stderr, "math eval: %d generations in %s, %d correct\n", stats.generated,
                 FormatDuration(clock.Seconds()).c_str(), correct);
  }
  return stats;
}

}  // namespace resa
