#include "runtime/serving/server.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <thread>

#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "runtime/apps/model_loading.h"
#include "runtime/core/status.h"
#include "runtime/serving/request.h"
#include "runtime/serving/support/logging.h"
#include "runtime/serving/support/metrics.h"

namespace resa::serving {

void AddServerFlags(CLI::App& app, ServerOptions& o) {
  app.add_option("--model", o.model,
                 "Model: 'default', an alias, a .gguf file or a Hugging Face directory (the "
                 "coordinator reads its tokenizer and shape; workers must serve the same model)")
      ->capture_default_str();
  AddServerSecurityFlags(app, o.security);
  app.add_option("--metrics-listen", o.metrics_listen,
                 "HOST:PORT for Prometheus metrics at /metrics (empty: no endpoint)");
  AddLoggingFlags(app, o.log_format, o.log_level);
  app.add_option("--max-queue", o.coordinator.scheduler.max_queue,
                 "Requests that may wait for admission; more get RESOURCE_EXHAUSTED")
      ->capture_default_str();
  app.add_option("--max-queue-tokens", o.coordinator.scheduler.max_queue_tokens,
                 "Prompt + max tokens the waiting requests may add up to (0: no bound)")
      ->capture_default_str();
  app.add_option("--plan-steps", o.coordinator.scheduler.plan_steps,
                 "Decode steps per plan sent to the workers (more: less control traffic, "
                 "slower reaction to new requests and cancellations)")
      ->capture_default_str();
  app.add_option("--rectify-budget", o.coordinator.scheduler.rectify_budget,
                 "Rectified tokens per step; sequences due beyond it wait a step, so "
                 "rectifications spread over steps (0: all due sequences at once)")
      ->capture_default_str();
  app.add_option("--heartbeat-timeout", o.heartbeat_timeout_s,
                 "Seconds without a worker event before its jobs fail with UNAVAILABLE")
      ->capture_default_str()
      ->check(CLI::Range(1.0, 3600.0));
  app.add_option("--drain-timeout", o.drain_timeout_s,
                 "Seconds running jobs may take to finish after SIGTERM before they are cancelled")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 86400.0));
  app.add_option("--max-message-bytes", o.max_message_bytes,
                 "Largest gRPC message accepted or sent")
      ->capture_default_str()
      ->check(CLI::Range(4096, 1 << 30));
  app.add_option("--max-prompt-bytes", o.coordinator.limits.max_prompt_bytes,
                 "Largest prompt (text bytes) a request may carry")
      ->capture_default_str();
  app.add_option("--default-max-tokens", o.coordinator.limits.default_max_tokens,
                 "max_tokens of requests that leave it unset")
      ->capture_default_str();
  app.add_option("--history", o.coordinator.history,
                 "Ended jobs remembered for GetJob / ListJobs")
      ->capture_default_str();
  app.add_option("--mode", o.mode, "Default decoding mode of requests: dense, sparse or resa")
      ->capture_default_str();
  app.add_option("--sparse-ratio", o.sparse_ratio, "Default kept fraction of KV blocks")
      ->capture_default_str();
  app.add_option("--min-blocks", o.min_blocks, "Default minimum blocks per sparse step")
      ->capture_default_str();
  app.add_option("--rectify-every", o.rectify_every, "Default rectification interval f")
      ->capture_default_str();
}

void AddWorkerGroupFlags(CLI::App& app, WorkerGroupOptions& o, bool with_ctx) {
  if (with_ctx) {
    app.add_option("--ctx", o.ctx, "Tokens per sequence (prompt + generated)")
        ->capture_default_str();
  }
  app.add_option("--max-batch", o.max_batch, "Sequences decoded together per step")
      ->capture_default_str();
  app.add_option("--kv-tokens", o.kv_tokens,
                 "KV cache size in tokens over all sequences (0: ctx x max-batch)")
      ->capture_default_str();
  app.add_option("--connect-timeout", o.connect_timeout_s,
                 "Seconds to wait for the coordinator to accept the connection")
      ->capture_default_str();
}

absl::Status ValidateWorkerGroup(const WorkerGroupOptions& o) {
  if (o.ctx < 2) return absl::InvalidArgumentError(absl::StrCat("--ctx must be >= 2, got ", o.ctx));
  if (o.max_batch < 1 || o.max_batch > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-batch must be in [1, 4096], got ", o.max_batch));
  }
  if (o.kv_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--kv-tokens must be >= 0, got ", o.kv_tokens));
  }
  if (o.kv_tokens > 0 && o.kv_tokens < o.ctx) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--kv-tokens (", o.kv_tokens, ") must hold at least one sequence of --ctx ", o.ctx));
  }
  if (!(o.connect_timeout_s > 0)) {
    return absl::InvalidArgumentError("--connect-timeout must be > 0");
  }
  return absl::OkStatus();
}

int32_t KvPagesPerRank(const WorkerGroupOptions& o, int sp) {
  const Capacity c{0, 0, 0, sp};
  if (o.kv_tokens > 0) return int32_t(c.PagesFor(o.kv_tokens) + o.max_batch);
  return int32_t(c.PagesFor(o.ctx) * o.max_batch);
}

v1::WorkerRegister MakeRegistration(const std::string& model, const ModelConfig& config,
                                    const Tokenizer& tokenizer, const WorkerGroupOptions& group,
                                    int world_size, int tp, int sp, int64_t kv_pages) {
  v1::WorkerRegister r;
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  r.set_worker_name(absl::StrCat(host, ":", getpid()));
  r.set_model(model);
  r.set_architecture(config.arch_name);
  r.set_vocab_size(config.vocab_size);
  r.set_tokenizer_fingerprint(TokenizerFingerprint(tokenizer));
  r.set_world_size(world_size);
  r.set_tp(tp);
  r.set_sp(sp);
  r.set_kv_pages(kv_pages);
  r.set_max_context(group.ctx);
  r.set_max_batch(group.max_batch);
  r.set_num_layers(config.num_layers);
  r.set_num_heads(config.num_heads);
  r.set_num_kv_heads(config.num_kv_heads);
  r.set_head_dim(config.head_dim);
  for (int32_t id : tokenizer.StopIds()) r.add_stop_ids(id);
  return r;
}

namespace {

int Fail(const absl::Status& st) {
  std::fprintf(stderr, "error: %s\n", std::string(st.message()).c_str());
  return 1;
}

// Signals delivered to a thread that does not block them (one a library started before main
// blocked them, such as OpenBLAS's pthread pool, created by a load-time constructor): counted by
// this handler instead of taking the default action (termination).
std::atomic<int> g_signals_handled{0};
extern "C" void CountSignal(int) { g_signals_handled.fetch_add(1, std::memory_order_relaxed); }

// Signals are taken by one thread (sigtimedwait) so that gRPC and OpenMP threads never see them;
// the handler above catches the ones that reach a thread which never blocked them.
class SignalWatcher {
 public:
  explicit SignalWatcher(const sigset_t& set) : set_(set) {
    struct sigaction sa {};
    sa.sa_handler = CountSignal;
    sigemptyset(&sa.sa_mask);
    for (int sig : {SIGTERM, SIGINT}) {
      if (sigismember(&set_, sig) == 1) sigaction(sig, &sa, &old_[sig == SIGINT]);
    }
    thread_ = std::thread([this] {
      timespec tick{0, 200 * 1000 * 1000};
      while (!stop_) {
        if (sigtimedwait(&set_, nullptr, &tick) > 0) count_++;
      }
    });
  }
  ~SignalWatcher() {
    stop_ = true;
    thread_.join();
    for (int sig : {SIGTERM, SIGINT}) {
      if (sigismember(&set_, sig) == 1) sigaction(sig, &old_[sig == SIGINT], nullptr);
    }
  }
  int count() const { return count_ + g_signals_handled.load(std::memory_order_relaxed); }

 private:
  sigset_t set_;
  struct sigaction old_[2] {};
  std::atomic<bool> stop_{false};
  std::atomic<int> count_{0};
  std::thread thread_;
};

}  // namespace

int RunServer(const ServerOptions& o, const InProcessWorker& in_process_worker) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  SignalWatcher signals(set);

  if (absl::Status st = SetupLogging(o.log_format, o.log_level); !st.ok()) return Fail(st);
  CoordinatorOptions copts = o.coordinator;
  copts.model_name = o.model;
  copts.heartbeat_timeout = absl::Seconds(o.heartbeat_timeout_s);
  auto mode = ParseDecodeMode(o.mode);
  if (!mode.ok()) return Fail(mode.status());
  copts.limits.default_resa = ResaOptions{*mode, o.sparse_ratio, o.min_blocks, o.rectify_every};

  auto path = ResolveModelPath(o.model);
  if (!path.ok()) return Fail(path.status());
  auto source = OpenWeightSource(*path);
  if (!source.ok()) return Fail(source.status());
  auto tokenizer = LoadTokenizer(**source);
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  const ModelConfig config = (*source)->config();

  auto token = LoadServerToken(o.security);
  if (!token.ok()) return Fail(token.status());
  copts.token = *token;
  auto creds = MakeServerCredentials(o.security);
  if (!creds.ok()) return Fail(creds.status());
  auto metrics = ServingMetrics::Create(o.metrics_listen);
  if (!metrics.ok()) return Fail(metrics.status());
  auto coordinator = Coordinator::Create(copts, std::move(*tokenizer), config, metrics->get());
  if (!coordinator.ok()) return Fail(coordinator.status());
  Coordinator& c = **coordinator;

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(o.security.listen, *creds, &port);
  builder.SetMaxReceiveMessageSize(o.max_message_bytes);
  builder.SetMaxSendMessageSize(o.max_message_bytes);
  builder.RegisterService(c.client_service());
  builder.RegisterService(c.worker_service());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return Fail(absl::UnavailableError(absl::StrCat(
        "cannot listen on ", o.security.listen, " (--listen): address in use or not local")));
  }
  c.Start(server->GetHealthCheckService());
  const std::string host = o.security.listen.substr(0, o.security.listen.rfind(':'));
  LogEvent(spdlog::level::info, "listening",
           {{"address", absl::StrCat(host, ":", port)},
            {"model", o.model},
            {"metrics", o.metrics_listen},
            {"tls", !o.security.tls_cert.empty()},
            {"auth", !copts.token.empty()}});
  // A line tests and scripts can wait for (the port is real even with --listen HOST:0).
  std::printf("resa: listening on %s:%d\n", host.c_str(), port);
  std::fflush(stdout);

  std::atomic<bool> worker_ended{false};
  absl::Status worker_status;
  std::thread worker;
  if (in_process_worker) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(o.max_message_bytes);
    args.SetMaxSendMessageSize(o.max_message_bytes);
    std::shared_ptr<grpc::Channel> channel = server->InProcessChannel(args);
    worker = std::thread([&, channel] {
      worker_status = in_process_worker(channel);
      worker_ended = true;
    });
  }

  while (signals.count() == 0 && !worker_ended) absl::SleepFor(absl::Milliseconds(50));
  int code = 0;
  if (worker_ended && !worker_status.ok()) {
    LogEvent(spdlog::level::err, "the in-process worker failed",
             {{"error", std::string(worker_status.message())}});
    std::fprintf(stderr, "error: %s\n", std::string(worker_status.message()).c_str());
    code = 1;
  } else if (signals.count() > 0) {
    c.BeginDrain();
    const absl::Time until = absl::Now() + absl::Seconds(o.drain_timeout_s);
    while (c.ActiveJobs() > 0 && absl::Now() < until && signals.count() < 2) {
      absl::SleepFor(absl::Milliseconds(50));
    }
    LogEvent(spdlog::level::info, "drained",
             {{"jobs_left", c.ActiveJobs()}, {"forced", signals.count() >= 2}});
  }
  c.Shutdown();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  if (worker.joinable()) worker.join();
  LogEvent(spdlog::level::info, "stopped");
  return code;
}

}  // namespace resa::serving
