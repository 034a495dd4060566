// `resa-bench attention`: CPU attention time of one decode step, dense vs sparse vs ReSA
// (rectification amortised), all measured in one run on the same cache.
#pragma once

#include "CLI/CLI.hpp"

namespace resa {

void AddAttentionBenchCommand(CLI::App& app, int& exit_code);

}  // namespace resa
