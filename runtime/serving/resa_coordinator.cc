// `resa-coordinator`: the gRPC front of a worker group (DESIGN.md §6): queue, admission,
// continuous batching, ReSA rectification scheduling, streaming, cancellation, metrics.
//
//   resa-coordinator --model default --listen 127.0.0.1:50051 --metrics-listen 127.0.0.1:9400
//   mpirun -np 4 resa-worker --model default --tp 2 --sp 2 --coordinator 127.0.0.1:50051
#include "CLI/CLI.hpp"
#include "runtime/apps/process_setup.h"
#include "runtime/serving/server.h"

#include <signal.h>

int main(int argc, char** argv) {
  // SIGTERM / SIGINT are taken by RunServer's signal thread (drain); block them before any
  // thread exists so that none of them can take the default action.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  resa::DefaultOpenMpWaitPolicy(argv);
  resa::serving::ServerOptions options;
  CLI::App app{
      "resa-coordinator: serves the resa.v1 gRPC API and drives a registered worker group "
      "(resa-worker --coordinator HOST:PORT)"};
  resa::serving::AddServerFlags(app, options);
  CLI11_PARSE(app, argc, argv);
  return resa::serving::RunServer(options);
}
