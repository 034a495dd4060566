// resa-client: the command-line client of the resa.v1.Resa API (DESIGN.md §6), also the reference
// client of the serving tests.
//
//   resa-client generate -p "Once upon a time" -n 64       streams the text to stdout
//   resa-client submit --user "Hi" ; resa-client status JOB --wait
//   resa-client cancel JOB | list | health | model
//
// Exit status: 0 success; 2 the job ended CANCELLED or FAILED (or not FINISHED for status
// --wait); 3 health is not SERVING; 10 + N an RPC failed with gRPC status code N (13
// INVALID_ARGUMENT, 15 NOT_FOUND, 18 RESOURCE_EXHAUSTED, 24 UNAVAILABLE, ...); 1 a local error
// (unreadable file, bad security options); CLI11's codes (>= 100) for bad flags.
// The server validates every request field: the client passes values through unchecked so that
// it can exercise the server's checks.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <google/protobuf/util/json_util.h>
#include <nlohmann/json.hpp>

#include "grpc/health/v1/health.grpc.pb.h"
#include "resa.grpc.pb.h"
#include "runtime/serving/support/security.h"

namespace {

using resa::serving::ClientSecurityOptions;
using json = nlohmann::json;

constexpr int kExitLocalError = 1;
constexpr int kExitJobNotFinished = 2;
constexpr int kExitNotServing = 3;
constexpr int kExitRpcBase = 10;

struct GlobalOptions {
  std::string server = "127.0.0.1:50051";
  double deadline_s = 0;  // 0 = none
  int max_message_bytes = 64 << 20;
  ClientSecurityOptions security;
};

struct RequestFlags {
  std::string prompt, prompt_file, system, user, tag, mode;
  std::vector<int> prompt_tokens;
  std::vector<std::string> messages, stop;
  int max_tokens = 0, top_k = 0, min_blocks = 0, rectify_every = 0;
  float temperature = 0, top_p = 0, sparse_ratio = 0;
  uint64_t seed = 0;
  double timeout_s = 0;
  bool ignore_eos = false;
  // Fields with explicit presence in the proto are sent only when their flag was given.
  CLI::Option* max_tokens_opt = nullptr;
  CLI::Option* top_p_opt = nullptr;
  CLI::Option* sparse_ratio_opt = nullptr;
  CLI::Option* min_blocks_opt = nullptr;
  CLI::Option* rectify_every_opt = nullptr;
};

// The deadline of every RPC of this command: --deadline bounds the whole command.
std::chrono::system_clock::time_point g_deadline = std::chrono::system_clock::time_point::max();

// Generate's context while the stream is open, so that SIGINT/SIGTERM cancel the call (the
// server then cancels the job) instead of killing the process mid-stream.
std::mutex g_active_mu;
grpc::ClientContext* g_active = nullptr;

void PrepareContext(grpc::ClientContext& context, const GlobalOptions& global) {
  resa::serving::AddAuth(context, global.security);
  if (g_deadline != std::chrono::system_clock::time_point::max()) context.set_deadline(g_deadline);
}

int RpcFailed(std::string_view what, const grpc::Status& st) {
  static const char* const kNames[] = {
      "OK",        "CANCELLED",          "UNKNOWN",        "INVALID_ARGUMENT",  "DEADLINE_EXCEEDED",
      "NOT_FOUND", "ALREADY_EXISTS",     "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
      "FAILED_PRECONDITION", "ABORTED",  "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",
      "UNAVAILABLE", "DATA_LOSS",        "UNAUTHENTICATED"};
  const int code = static_cast<int>(st.error_code());
  const char* name = code >= 0 && code <= 16 ? kNames[code] : "UNKNOWN";
  std::fprintf(stderr, "resa-client: %.*s failed: %s: %s\n", static_cast<int>(what.size()),
               what.data(), name, st.error_message().c_str());
  return kExitRpcBase + code;
}

int LocalError(const std::string& message) {
  std::fprintf(stderr, "resa-client: %s\n", message.c_str());
  return kExitLocalError;
}

// A message as JSON with proto field names and every field present; `bytes` text fields are
// replaced by their UTF-8 text (invalid sequences become U+FFFD) instead of base64.
json ToJson(const google::protobuf::Message& message, const std::string* text = nullptr) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(message, &out, options).ok()) {
    return json{{"error", "cannot print " + message.GetTypeName()}};
  }
  json j = json::parse(out, nullptr, /*allow_exceptions=*/false);
  if (text != nullptr && j.is_object()) j["text"] = *text;
  // Every other top-level bytes field (client_tag) as text too.
  const google::protobuf::Descriptor* d = message.GetDescriptor();
  const google::protobuf::Reflection* r = message.GetReflection();
  for (int i = 0; i < d->field_count() && j.is_object(); ++i) {
    const google::protobuf::FieldDescriptor* f = d->field(i);
    if (f->type() == google::protobuf::FieldDescriptor::TYPE_BYTES && !f->is_repeated() &&
        f->name() != "text") {
      j[f->name()] = r->GetString(message, f);
    }
  }
  return j;
}

std::string Dump(const json& j, int indent = -1) {
  return j.dump(indent, ' ', false, json::error_handler_t::replace);
}

void AddRequestFlags(CLI::App& app, RequestFlags& f) {
  auto* prompt = app.add_option("-p,--prompt", f.prompt, "prompt text, encoded as is");
  auto* file = app.add_option("-f,--prompt-file", f.prompt_file,
                              "file holding the prompt text ('-' reads stdin)");
  prompt->excludes(file);
  app.add_option("--prompt-tokens", f.prompt_tokens, "prompt as token ids, comma separated")
      ->delimiter(',');
  app.add_option("--system", f.system, "chat: a system message (rendered with the chat template)");
  app.add_option("--user", f.user, "chat: the user message");
  app.add_option("--message", f.messages,
                 "chat: ROLE:CONTENT (system|user|assistant), repeatable, after --system/--user");
  f.max_tokens_opt = app.add_option("-n,--max-tokens", f.max_tokens,
                                    "tokens to generate at most (unset: the server's default)");
  app.add_option("--stop", f.stop, "stop string, repeatable: generation ends before it");
  app.add_option("--temperature", f.temperature, "sampling temperature (0: greedy)");
  app.add_option("--top-k", f.top_k, "keep the k most likely tokens (0: no limit)");
  f.top_p_opt = app.add_option("--top-p", f.top_p, "nucleus sampling mass (unset: 1.0)");
  app.add_option("--seed", f.seed, "sampling seed");
  app.add_option("--mode", f.mode, "decode mode: dense, sparse or resa (default: the server's)")
      ->check(CLI::IsMember({"dense", "sparse", "resa"}));
  f.sparse_ratio_opt = app.add_option(
      "--sparse-ratio", f.sparse_ratio,
      "fraction of 16-token KV blocks a sparse step reads (unset: the server's default)");
  f.min_blocks_opt = app.add_option("--min-blocks", f.min_blocks,
                                    "blocks a sparse step reads at least (unset: default)");
  f.rectify_every_opt = app.add_option("--rectify-every", f.rectify_every,
                                       "ReSA rectification interval in tokens (unset: default)");
  app.add_option("--timeout", f.timeout_s,
                 "seconds the job may take from submission, queue included (0: none)");
  app.add_flag("--ignore-eos", f.ignore_eos, "keep generating past end-of-sequence tokens");
  app.add_option("--tag", f.tag, "free text echoed in the job's JobInfo");
}

absl::StatusOr<resa::v1::GenerateRequest> BuildRequest(const RequestFlags& f) {
  resa::v1::GenerateRequest req;
  if (!f.prompt_file.empty()) {
    std::string text;
    if (f.prompt_file == "-") {
      text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    } else {
      std::ifstream in(f.prompt_file, std::ios::binary);
      if (!in) return absl::NotFoundError("cannot read --prompt-file " + f.prompt_file);
      text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    req.set_prompt(text);
  } else {
    req.set_prompt(f.prompt);
  }
  for (const int t : f.prompt_tokens) req.add_prompt_tokens(t);
  auto add_message = [&](const std::string& role, const std::string& content) {
    resa::v1::ChatMessage* m = req.add_messages();
    m->set_role(role);
    m->set_content(content);
  };
  if (!f.system.empty()) add_message("system", f.system);
  if (!f.user.empty()) add_message("user", f.user);
  for (const std::string& m : f.messages) {
    const size_t colon = m.find(':');
    if (colon == std::string::npos) {
      return absl::InvalidArgumentError("--message wants ROLE:CONTENT, got '" + m + "'");
    }
    add_message(m.substr(0, colon), m.substr(colon + 1));
  }
  const auto given = [](const CLI::Option* o) { return o != nullptr && o->count() > 0; };
  if (given(f.max_tokens_opt)) req.set_max_tokens(f.max_tokens);
  for (const std::string& s : f.stop) req.add_stop(s);
  resa::v1::SamplingSettings* s = req.mutable_sampling();
  s->set_temperature(f.temperature);
  s->set_top_k(f.top_k);
  if (given(f.top_p_opt)) s->set_top_p(f.top_p);
  s->set_seed(f.seed);
  resa::v1::ResaSettings* r = req.mutable_resa();
  if (f.mode == "dense") r->set_mode(resa::v1::DECODE_MODE_DENSE);
  if (f.mode == "sparse") r->set_mode(resa::v1::DECODE_MODE_SPARSE);
  if (f.mode == "resa") r->set_mode(resa::v1::DECODE_MODE_RESA);
  if (given(f.sparse_ratio_opt)) r->set_sparse_ratio(f.sparse_ratio);
  if (given(f.min_blocks_opt)) r->set_min_blocks(f.min_blocks);
  if (given(f.rectify_every_opt)) r->set_rectify_every(f.rectify_every);
  req.set_timeout_seconds(f.timeout_s);
  req.set_ignore_eos(f.ignore_eos);
  req.set_client_tag(f.tag);
  return req;
}

void PrintReport(const resa::v1::GenerateResponse& last) {
  const resa::v1::GenerationReport& r = last.report();
  const double ratio = r.blocks_total() > 0 ? static_cast<double>(r.blocks_read()) /
                                                  static_cast<double>(r.blocks_total())
                                            : 1.0;
  std::fprintf(stderr,
               "[report] job=%s state=%s reason=%s prompt=%d generated=%d queue=%.3fs "
               "ttft=%.3fs per_token=%.2fms total=%.3fs blocks_read=%lld/%lld (%.1f%%) "
               "sparse_steps=%d rectifications=%d\n",
               last.job_id().c_str(), resa::v1::JobState_Name(last.state()).c_str(),
               resa::v1::FinishReason_Name(last.finish_reason()).c_str(), r.prompt_tokens(),
               r.generated_tokens(), r.queue_seconds(), r.time_to_first_token_seconds(),
               r.time_per_token_seconds() * 1e3, r.total_seconds(),
               static_cast<long long>(r.blocks_read()), static_cast<long long>(r.blocks_total()),
               100.0 * ratio, r.sparse_steps(), r.rectifications());
}

int Generate(resa::v1::Resa::Stub& stub, const GlobalOptions& global, const RequestFlags& flags,
             bool as_json) {
  absl::StatusOr<resa::v1::GenerateRequest> req = BuildRequest(flags);
  if (!req.ok()) return LocalError(std::string(req.status().message()));
  grpc::ClientContext context;
  PrepareContext(context, global);
  {
    std::lock_guard<std::mutex> lock(g_active_mu);
    g_active = &context;
  }
  std::unique_ptr<grpc::ClientReader<resa::v1::GenerateResponse>> reader =
      stub.Generate(&context, *req);
  resa::v1::GenerateResponse response, last;
  bool done = false;
  bool newline_pending = false;
  while (reader->Read(&response)) {
    if (as_json) {
      std::printf("%s\n", Dump(ToJson(response, &response.text())).c_str());
    } else if (!response.text().empty()) {
      std::fwrite(response.text().data(), 1, response.text().size(), stdout);
      newline_pending = response.text().back() != '\n';
    }
    std::fflush(stdout);
    if (response.done()) {
      done = true;
      last = response;
    }
  }
  const grpc::Status st = reader->Finish();
  {
    std::lock_guard<std::mutex> lock(g_active_mu);
    g_active = nullptr;
  }
  if (newline_pending && isatty(STDOUT_FILENO)) std::printf("\n");
  if (!st.ok()) return RpcFailed("generate", st);
  if (!done) return LocalError("generate: the stream ended without a final message");
  PrintReport(last);
  return last.state() == resa::v1::JOB_STATE_FINISHED ? 0 : kExitJobNotFinished;
}

int Submit(resa::v1::Resa::Stub& stub, const GlobalOptions& global, const RequestFlags& flags) {
  absl::StatusOr<resa::v1::GenerateRequest> req = BuildRequest(flags);
  if (!req.ok()) return LocalError(std::string(req.status().message()));
  grpc::ClientContext context;
  PrepareContext(context, global);
  resa::v1::SubmitResponse response;
  const grpc::Status st = stub.Submit(&context, *req, &response);
  if (!st.ok()) return RpcFailed("submit", st);
  std::printf("%s\n", response.job_id().c_str());
  return 0;
}

bool Terminal(resa::v1::JobState s) {
  return s == resa::v1::JOB_STATE_FINISHED || s == resa::v1::JOB_STATE_CANCELLED ||
         s == resa::v1::JOB_STATE_FAILED;
}

int Status(resa::v1::Resa::Stub& stub, const GlobalOptions& global, const std::string& job,
           bool wait, double poll_s) {
  resa::v1::JobRequest req;
  req.set_job_id(job);
  resa::v1::JobInfo info;
  for (;;) {
    grpc::ClientContext context;
    PrepareContext(context, global);
    const grpc::Status st = stub.GetJob(&context, req, &info);
    if (!st.ok()) return RpcFailed("status", st);
    if (!wait || Terminal(info.state())) break;
    std::this_thread::sleep_for(std::chrono::duration<double>(poll_s));
  }
  std::printf("%s\n", Dump(ToJson(info, &info.text()), 2).c_str());
  if (!wait) return 0;
  return info.state() == resa::v1::JOB_STATE_FINISHED ? 0 : kExitJobNotFinished;
}

int Cancel(resa::v1::Resa::Stub& stub, const GlobalOptions& global, const std::string& job) {
  resa::v1::JobRequest req;
  req.set_job_id(job);
  resa::v1::JobInfo info;
  grpc::ClientContext context;
  PrepareContext(context, global);
  const grpc::Status st = stub.CancelJob(&context, req, &info);
  if (!st.ok()) return RpcFailed("cancel", st);
  std::printf("%s\n", Dump(ToJson(info, &info.text()), 2).c_str());
  return 0;
}

int List(resa::v1::Resa::Stub& stub, const GlobalOptions& global,
         const std::vector<std::string>& states, int limit) {
  resa::v1::ListJobsRequest req;
  for (const std::string& s : states) {
    resa::v1::JobState state;
    if (!resa::v1::JobState_Parse("JOB_STATE_" + s, &state)) {
      return LocalError("--state: unknown job state '" + s + "'");
    }
    req.add_states(state);
  }
  req.set_limit(limit);
  resa::v1::ListJobsResponse response;
  grpc::ClientContext context;
  PrepareContext(context, global);
  const grpc::Status st = stub.ListJobs(&context, req, &response);
  if (!st.ok()) return RpcFailed("list", st);
  for (const resa::v1::JobInfo& info : response.jobs()) {
    std::printf("%s\n", Dump(ToJson(info, &info.text())).c_str());
  }
  return 0;
}

int Health(const std::shared_ptr<grpc::Channel>& channel, const GlobalOptions& global,
           const std::string& service) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::ClientContext context;
  PrepareContext(context, global);
  const grpc::Status st = stub->Check(&context, req, &response);
  if (!st.ok()) return RpcFailed("health", st);
  const std::string name =
      grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status());
  std::printf("%s\n", name.c_str());
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0
                                                                              : kExitNotServing;
}

int Model(resa::v1::Resa::Stub& stub, const GlobalOptions& global) {
  resa::v1::ModelInfoResponse response;
  grpc::ClientContext context;
  PrepareContext(context, global);
  const grpc::Status st = stub.ModelInfo(&context, resa::v1::ModelInfoRequest(), &response);
  if (!st.ok()) return RpcFailed("model", st);
  std::printf("%s\n", Dump(ToJson(response), 2).c_str());
  return 0;
}

// Waits for SIGINT/SIGTERM (blocked in every thread) and cancels the open Generate call; a
// second signal, or one outside a call, ends the process.
void SignalThread(sigset_t set) {
  for (;;) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) return;
    std::lock_guard<std::mutex> lock(g_active_mu);
    if (g_active == nullptr) _exit(128 + sig);
    g_active->TryCancel();
    g_active = nullptr;
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"resa-client: call a resa coordinator (resa.v1.Resa) over gRPC"};
  app.require_subcommand(1);
  app.fallthrough();  // global flags may also follow the subcommand
  app.footer(
      "Exit status: 0 ok; 2 job CANCELLED/FAILED; 3 health not SERVING; 10+N gRPC status N "
      "(13 INVALID_ARGUMENT, 15 NOT_FOUND, 18 RESOURCE_EXHAUSTED, 24 UNAVAILABLE); 1 local "
      "error.");
  GlobalOptions global;
  app.add_option("--server", global.server, "coordinator address, HOST:PORT")
      ->capture_default_str();
  app.add_option("--deadline", global.deadline_s,
                 "seconds the whole command may take; RPCs still open then fail with "
                 "DEADLINE_EXCEEDED (0: none)");
  app.add_option("--max-message-bytes", global.max_message_bytes,
                 "largest message the client sends or accepts")
      ->capture_default_str();
  resa::serving::AddClientSecurityFlags(app, global.security);

  RequestFlags gen_flags, submit_flags;
  bool as_json = false;
  CLI::App* gen = app.add_subcommand("generate", "run a job and stream its text to stdout");
  AddRequestFlags(*gen, gen_flags);
  gen->add_flag("--json", as_json, "print every response message as a JSON line instead");
  CLI::App* submit = app.add_subcommand("submit", "queue a job and print its id");
  AddRequestFlags(*submit, submit_flags);

  std::string job;
  bool wait = false;
  double poll_s = 0.2;
  CLI::App* status = app.add_subcommand("status", "print a job's JobInfo as JSON");
  status->add_option("job", job, "job id")->required();
  status->add_flag("--wait", wait, "poll until the job is finished, cancelled or failed");
  status->add_option("--poll-interval", poll_s, "seconds between polls with --wait")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  CLI::App* cancel = app.add_subcommand("cancel", "cancel a job and print its JobInfo");
  cancel->add_option("job", job, "job id")->required();

  std::vector<std::string> states;
  int limit = 0;
  CLI::App* list = app.add_subcommand("list", "print jobs as JSON lines, newest first");
  list->add_option("--state", states, "only jobs in these states (queued, running, finished, "
                                      "cancelled, failed), repeatable")
      ->transform([](std::string s) {
        for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        return s;
      });
  list->add_option("--limit", limit, "at most this many jobs (0: server default 100)");

  std::string health_service;
  CLI::App* health = app.add_subcommand(
      "health", "grpc.health.v1 Check: print the status, exit 0 iff SERVING");
  health->add_option("--service", health_service, "service name to check (empty: the server)");
  CLI::App* model = app.add_subcommand("model", "print the served model (ModelInfo) as JSON");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  if (global.deadline_s > 0) {
    g_deadline = std::chrono::system_clock::now() +
                 std::chrono::duration_cast<std::chrono::system_clock::duration>(
                     std::chrono::duration<double>(global.deadline_s));
  }
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      resa::serving::MakeChannel(global.server, global.security, global.max_message_bytes);
  if (!channel.ok()) return LocalError(std::string(channel.status().message()));

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread(SignalThread, set).detach();

  auto stub = resa::v1::Resa::NewStub(*channel);
  if (*gen) return Generate(*stub, global, gen_flags, as_json);
  if (*submit) return Submit(*stub, global, submit_flags);
  if (*status) return Status(*stub, global, job, wait, poll_s);
  if (*cancel) return Cancel(*stub, global, job);
  if (*list) return List(*stub, global, states, limit);
  if (*health) return Health(*channel, global, health_service);
  if (*model) return Model(*stub, global);
  return LocalError("no subcommand");
}
