// `resa-bench prefill`: whole-model prefill speed on the GPU: time to prefill a prompt (the
// first token's logits included) at several prompt lengths and prefill chunk sizes, with each
// prefill's bound from the ceilings measured in the same run (FLOPs at the bf16 GEMM rate,
// bytes at the copy rate) and, per row, where the time goes by kernel group.
#pragma once

#include "CLI/CLI.hpp"

namespace resa {

void AddPrefillBenchCommand(CLI::App& app, int& exit_code);

}  // namespace resa
