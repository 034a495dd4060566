// `resa`: the embedded runtime's command line.
#include <cstdio>

#include "CLI/CLI.hpp"
#include "runtime/apps/generate_command.h"
#include "runtime/apps/process_setup.h"

int main(int argc, char** argv) {
  resa::DefaultOpenMpWaitPolicy(argv);
  CLI::App app{"resa: long-context LLM decoding with Rectified Sparse Attention"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "resa 0.1.0");
  int exit_code = 0;
  resa::GenerateCommandOptions generate;
  resa::AddGenerateCommand(app, generate, exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return exit_code;
}
