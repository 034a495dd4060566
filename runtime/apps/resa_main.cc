// `resa`: the embedded runtime's command line.
#include <cstdio>

#include "CLI/CLI.hpp"
#include "runtime/apps/generate_command.h"
#include "runtime/apps/process_setup.h"
#if RESA_HAVE_GRPC
#include "runtime/serving/serve_command.h"
#endif

int main(int argc, char** argv) {
  resa::DefaultOpenMpWaitPolicy(argv);
  CLI::App app{"resa: long-context LLM decoding with Rectified Sparse Attention"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "resa 0.1.0");
  int exit_code = 0;
  resa::GenerateCommandOptions generate;
  resa::AddGenerateCommand(app, generate, exit_code);
#if RESA_HAVE_GRPC
  resa::serving::AddServeCommand(app, exit_code);
#else
  app.add_subcommand("serve", "Serve a model over gRPC (not in this build)")
      ->allow_extras()
      ->callback([&exit_code] {
        std::fprintf(stderr,
                     "error: this resa was built without gRPC (RESA_GRPC=OFF or gRPC not found); "
                     "install libgrpc++-dev protobuf-compiler-grpc prometheus-cpp-dev and rebuild "
                     "(README, Dependencies)\n");
        exit_code = 1;
      });
#endif
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return exit_code;
}
