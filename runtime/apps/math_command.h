// `resa-eval math` (generate, extract, grade; dense / sparse / ReSA) and `resa-eval math-summary`
// (the paper-style table of an output directory). See runtime/eval/ for the library.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"

namespace resa {

struct MathCommandOptions {
  std::string model = "default";
  std::string data;
  std::vector<std::string> datasets = {"minerva_math", "gaokao2023en", "olympiadbench", "aime24",
                                       "amc23"};
  std::vector<std::string> modes = {"dense", "sparse", "resa"};
  int limit = 0;
  int samples = 1;
  int max_new_tokens = 16384;
  std::string prompt = "r1";
  float temperature = 0.6f;
  float top_p = 0.9f;
  int top_k = 0;
  uint64_t seed = 0;
  float sparse_ratio = 0.1f;
  int min_blocks = 16;
  int rectify_every = 32;
  int batch = 8;
  int threads = 0;
  int prefill_chunk = 512;
  std::string out = "math-out";
  std::string server;
  double timeout = 0.0;
  int stop_after = 0;
  bool quiet = false;
};

struct MathSummaryCommandOptions {
  std::string out;
  bool regrade = false;
  bool paired = false;
  std::string format = "both";  // md | csv | both
};

void AddMathCommands(CLI::App& app, MathCommandOptions& math, MathSummaryCommandOptions& summary,
                     int& exit_code);
int RunMath(const MathCommandOptions& options);
int RunMathSummary(const MathSummaryCommandOptions& options);

}  // namespace resa
