// `resa-bench kernels`: the attention kernels on the GPU against the copy ceiling and PyTorch
// SDPA measured in the same run; with --gemv, the decode GEMV against cuBLAS and the copy ceiling. Built in every configuration; without CUDA it says so.
#pragma once

#include "CLI/CLI.hpp"

namespace resa {

void AddKernelsBenchCommand(CLI::App& app, int& exit_code);

}  // namespace resa
