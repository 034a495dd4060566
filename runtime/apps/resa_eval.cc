// resa-eval: quality of sparse and ReSA decoding against dense.
#include "CLI/CLI.hpp"
#include "runtime/apps/fidelity.h"
#include "runtime/apps/process_setup.h"

int main(int argc, char** argv) {
  resa::DefaultOpenMpWaitPolicy(argv);
  CLI::App app{"resa-eval: fidelity of sparse / ReSA decoding to dense"};
  app.require_subcommand(1);
  int exit_code = 0;
  resa::FidelityOptions fidelity;
  resa::AddFidelityCommand(app, fidelity, exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return exit_code;
}
