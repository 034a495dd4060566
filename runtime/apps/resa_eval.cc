// resa-eval: quality of sparse and ReSA decoding against dense.
#include "CLI/CLI.hpp"
#include "runtime/apps/fidelity.h"
#include "runtime/apps/math_command.h"
#include "runtime/apps/process_setup.h"

int main(int argc, char** argv) {
  resa::DefaultOpenMpWaitPolicy(argv);
  CLI::App app{"resa-eval: quality of sparse / ReSA decoding against dense (fidelity, math benchmarks)"};
  app.require_subcommand(1);
  int exit_code = 0;
  resa::FidelityOptions fidelity;
  resa::AddFidelityCommand(app, fidelity, exit_code);
  resa::MathCommandOptions math;
  resa::MathSummaryCommandOptions math_summary;
  resa::AddMathCommands(app, math, math_summary, exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return exit_code;
}
