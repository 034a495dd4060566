// `resa serve`: the coordinator and a one-rank worker group in one process (the embedded case),
// behind the same gRPC API as a cluster deployment.
#pragma once

#include "CLI/CLI.hpp"

namespace resa::serving {

// Registers the subcommand; when it runs, `exit_code` receives its result.
void AddServeCommand(CLI::App& app, int& exit_code);

}  // namespace resa::serving
