// The coordinator as a program (`resa-coordinator`, `resa serve`): flags, the gRPC server (client
// API, worker control, health, reflection), metrics, logs, and the SIGTERM drain; plus what a
// worker group needs to register (`resa-worker --coordinator`, `resa serve`).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "grpcpp/channel.h"
#include "resa.pb.h"
#include "runtime/model/model_config.h"
#include "runtime/serving/coordinator.h"
#include "runtime/serving/support/security.h"

namespace resa::serving {

struct ServerOptions {
  std::string model = "default";
  ServerSecurityOptions security;
  std::string metrics_listen;  // host:port of the Prometheus endpoint; empty: none
  std::string log_format = "text", log_level = "info";
  CoordinatorOptions coordinator;
  double heartbeat_timeout_s = 10, drain_timeout_s = 30;
  int max_message_bytes = 4 << 20;
  std::string mode = "resa";  // default ReSA settings of requests that leave them unset
  float sparse_ratio = 0.1f;
  int min_blocks = 16, rectify_every = 32;
};
void AddServerFlags(CLI::App& app, ServerOptions& options);

// Runs until SIGTERM or SIGINT: then drains (no new jobs, running ones finish, up to
// --drain-timeout), tells the worker group to shut down, and returns 0. `in_process_worker`, when
// set, runs on its own thread with a channel to this server (`resa serve`); its failure ends the
// server with exit code 1. Returns 1 (after printing the error) when the server cannot start.
using InProcessWorker = std::function<absl::Status(std::shared_ptr<grpc::Channel>)>;
int RunServer(const ServerOptions& options, const InProcessWorker& in_process_worker = {});

// The worker-group capacity flags shared by `resa-worker` and `resa serve`.
struct WorkerGroupOptions {
  int32_t ctx = 4096;       // tokens per sequence
  int32_t max_batch = 8;    // sequences per step
  int64_t kv_tokens = 0;    // KV pool in tokens over all sequences; 0: ctx * max_batch
  double connect_timeout_s = 30;
};
// with_ctx: also --ctx (resa-worker has its own, shared with one-prompt runs).
void AddWorkerGroupFlags(CLI::App& app, WorkerGroupOptions& options, bool with_ctx = true);
absl::Status ValidateWorkerGroup(const WorkerGroupOptions& options);
// Pages per rank for the pool (blocks spread over `sp` ranks; one page of slack per sequence).
int32_t KvPagesPerRank(const WorkerGroupOptions& options, int sp);

v1::WorkerRegister MakeRegistration(const std::string& model, const ModelConfig& config,
                                    const Tokenizer& tokenizer, const WorkerGroupOptions& group,
                                    int world_size, int tp, int sp, int64_t kv_pages);

}  // namespace resa::serving
