// `resa-bench e2e`: end-to-end decode speed of the whole model on a backend (the CUDA one on the
// H200): time per decode step (prefill excluded: contexts are filled synthetically; ReSA's
// rectification included) for dense, sparse and ReSA at several contexts and batch sizes, with
// the bytes-moved bound of each step against the device copy ceiling measured in the same run,
// and the same dense step through PyTorch (SDPA + cuBLAS in a CUDA graph) as the peer baseline.
#pragma once

#include "CLI/CLI.hpp"

namespace resa {

void AddE2eBenchCommand(CLI::App& app, int& exit_code);

}  // namespace resa
