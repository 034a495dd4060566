#include "runtime/serving/serve_command.h"

#include <memory>

#include "runtime/apps/model_loading.h"
#include "runtime/core/status.h"
#include "runtime/engine/backend_factory.h"
#include "runtime/engine/kv_cache.h"
#include "runtime/serving/server.h"
#include "runtime/serving/support/logging.h"
#include "runtime/serving/worker_link.h"

namespace resa::serving {

namespace {

struct ServeOptions {
  ServerOptions server;
  WorkerGroupOptions group;
  int threads = 0;
  std::string device = "cpu";
  int cuda_device = 0;
};

// The in-process worker: loads the model (after the server is up, so health reports
// NOT_SERVING meanwhile), then serves plans until the coordinator shuts it down.
absl::Status RunInProcessWorker(const ServeOptions& o, std::shared_ptr<grpc::Channel> channel) {
  ConfigureThreads(o.threads);
  RESA_ASSIGN_OR_RETURN(const Device device, ParseDevice(o.device));
  RESA_RETURN_IF_ERROR(CheckDevice(device, o.cuda_device));
  RESA_ASSIGN_OR_RETURN(LoadedModel m, LoadModel(o.server.model, LoadOptions{.progress = false}));
  const ModelConfig& cfg = m.source->config();
  const int32_t pages = KvPagesPerRank(o.group, 1);
  BackendOptions bo{.device = device, .kv_tokens = int64_t(pages) * kPageTokens};
  bo.cuda_device = o.cuda_device;
  RESA_ASSIGN_OR_RETURN(Backend backend, MakeBackend(*m.weights, bo));
  LogEvent(spdlog::level::info, "model loaded",
           {{"model", m.path}, {"device", backend.description}, {"kv_pages", pages},
            {"ctx", o.group.ctx}, {"max_batch", o.group.max_batch}});
  WorkerSession session(*backend.model, m.tokenizer->StopIds(), o.group.ctx, nullptr);
  WorkerLinkOptions link;
  link.channel = std::move(channel);
  // The in-process worker authenticates like any other.
  RESA_ASSIGN_OR_RETURN(link.security.token, LoadServerToken(o.server.security));
  link.connect_timeout = absl::Seconds(o.group.connect_timeout_s);
  const v1::WorkerRegister reg =
      MakeRegistration(o.server.model, cfg, *m.tokenizer, o.group, 1, 1, 1, pages);
  return RunWorkerLink(link, reg, session, nullptr);
}

}  // namespace

void AddServeCommand(CLI::App& app, int& exit_code) {
  auto o = std::make_shared<ServeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "serve", "Serve a model over gRPC: coordinator + one in-process worker (loopback by default)");
  AddServerFlags(*cmd, o->server);
  AddWorkerGroupFlags(*cmd, o->group);
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)")->capture_default_str();
  cmd->add_option("--device", o->device,
                  "Where the model runs: cpu, or cuda (bf16 weights and KV cache on the GPU)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_option("--cuda-device", o->cuda_device, "With --device cuda: the CUDA device index")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->callback([o, &exit_code] {
    if (absl::Status st = ValidateWorkerGroup(o->group); !st.ok()) {
      std::fprintf(stderr, "error: %s\n", std::string(st.message()).c_str());
      exit_code = 1;
      return;
    }
    exit_code = RunServer(o->server, [o](std::shared_ptr<grpc::Channel> channel) {
      return RunInProcessWorker(*o, std::move(channel));
    });
  });
}

}  // namespace resa::serving
