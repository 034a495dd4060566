// resa-kernels-bench: `resa-bench kernels` without the rest of resa-bench (model loading, engine),
// so the kernel benchmark builds and runs even while other modules are being changed.
#include "CLI/CLI.hpp"
#include "runtime/apps/kernels_bench.h"

int main(int argc, char** argv) {
  CLI::App app{"resa-kernels-bench: CUDA kernels vs copy ceiling and PyTorch SDPA (JSON lines)"};
  app.require_subcommand(1);
  int exit_code = 0;
  resa::AddKernelsBenchCommand(app, exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return exit_code;
}
