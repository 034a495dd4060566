// `resa generate`: load a model, prefill a prompt, stream the generated text, print stats.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "runtime/engine/generate.h"
#include "runtime/tokenizer/tokenizer.h"

namespace resa {

struct GenerateCommandOptions {
  std::string model = "default";
  std::string prompt;
  std::string prompt_file;
  bool chat = false;
  std::string system;
  int max_new_tokens = 256;
  float temperature = 0.0f;
  float top_p = 1.0f;
  int top_k = 0;
  uint64_t seed = 0;
  int threads = 0;
  int ctx = 4096;
  int prefill_chunk = 0;  // 0: the backend's (ModelBackend::prefill_chunk)
  bool quiet = false;
  std::string device = "cpu";  // cpu or cuda (--device)
  std::string mode = "resa";
  float sparse_ratio = 0.1f;
  int min_blocks = 16;
  int rectify_every = 32;
};

// Registers --mode, --sparse-ratio, --min-blocks, --rectify-every on a command.
void AddResaFlags(CLI::App& cmd, std::string& mode, float& sparse_ratio, int& min_blocks,
                  int& rectify_every);

// Registers --sparse-ratio, --min-blocks, --rectify-every (for commands that pick the modes
// themselves, such as the evaluations' --modes).
void AddSparseFlags(CLI::App& cmd, float& sparse_ratio, int& min_blocks, int& rectify_every);

// Registers the flags every generating program shares (model, prompt, chat, sampling, context,
// threads, ReSA) on `cmd`.
void AddGenerationFlags(CLI::App& cmd, GenerateCommandOptions& options);

// The prompt text: --prompt or the contents of --prompt-file (missing, unreadable or empty
// files are errors that name the flag). Cheap: call it before loading the model.
absl::StatusOr<std::string> ReadPrompt(const GenerateCommandOptions& options);

// The prompt text as token ids: rendered with the chat template under --chat, encoded, and
// checked to leave room in --ctx. Errors name the flag.
absl::StatusOr<std::vector<int32_t>> PromptIds(const GenerateCommandOptions& options,
                                               const std::string& prompt,
                                               const Tokenizer& tokenizer);

// Where a sparse or ReSA generation's decode time went, for the stats line: "selection 0.012s,
// sparse attention 0.020s, rectification 0.006s, rest 0.049s" where the backend times its phases
// (CPU), else "rectification 0.006s, rest of decode 0.049s (selection and attention are not
// timed apart from the rest of a step on this device)" (CUDA, whose steps run as graphs).
std::string DecodeTimeSplit(const GenerateStats& stats);

// Registers the subcommand; `run` is set to the function that executes it (exit code).
void AddGenerateCommand(CLI::App& app, GenerateCommandOptions& options, int& exit_code);

int RunGenerate(const GenerateCommandOptions& options);

}  // namespace resa
