// `resa-eval fidelity`: how far sparse and ReSA decoding drift from dense on real text.
//
// The prompt (N tokens of the text) is prefilled once; each mode then decodes G positions in two
// settings: teacher-forced (every mode is fed the text's own continuation) and free-running (each
// mode feeds back its own greedy tokens). All 2 x modes sequences advance in one batched step, so
// the weights are read once per position for all of them. Per position and mode: top-1 agreement
// with dense, KL(dense || mode), and the negative log-likelihood of the fed continuation.
#pragma once

#include <string>
#include <vector>

#include "CLI/CLI.hpp"

namespace resa {

struct FidelityOptions {
  std::string model = "default";
  std::string text;
  int prompt_tokens = 4096;
  int decode_tokens = 512;
  int offset_tokens = 0;  // skip this many tokens of the text first
  std::string out = "fidelity-out";
  std::vector<std::string> modes = {"dense", "sparse", "resa"};
  float sparse_ratio = 0.1f;
  int min_blocks = 16;
  int rectify_every = 32;
  int threads = 0;
  int prefill_chunk = 512;
  bool plot = true;
};

void AddFidelityCommand(CLI::App& app, FidelityOptions& options, int& exit_code);
int RunFidelity(const FidelityOptions& options);

}  // namespace resa
