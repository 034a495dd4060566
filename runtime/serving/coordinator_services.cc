// The gRPC handlers of the coordinator: thin adapters from resa.v1 calls to Coordinator.
#include "absl/strings/str_cat.h"
#include "runtime/serving/coordinator.h"
#include "runtime/serving/support/logging.h"

namespace resa::serving {

namespace {

grpc::Status ToGrpc(const absl::Status& st) {
  if (st.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(st.code()), std::string(st.message()));
}

absl::Time DeadlineOf(const grpc::ServerContext& context) {
  const auto d = context.deadline();
  if (d == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return absl::FromChrono(d);
}

}  // namespace

class Coordinator::ClientService final : public v1::Resa::Service {
 public:
  explicit ClientService(Coordinator& c) : c_(c) {}

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override {
    if (grpc::Status a = c_.CheckAuth(*context); !a.ok()) return a;
    auto job = c_.SubmitJob(*request, DeadlineOf(*context));
    if (!job.ok()) return ToGrpc(job.status());
    return c_.StreamJob(*context, *job, *writer);
  }

  grpc::Status Submit(grpc::ServerContext* context, const v1::GenerateRequest* request,
                      v1::SubmitResponse* response) override {
    if (grpc::Status a = c_.CheckAuth(*context); !a.ok()) return a;
    // A queued job outlives this call: the call's deadline does not bound it.
    auto job = c_.SubmitJob(*request, absl::InfiniteFuture());
    if (!job.ok()) return ToGrpc(job.status());
    response->set_job_id((*job)->id);
    return grpc::Status::OK;
  }

  grpc::Status GetJob(grpc::ServerContext* context, const v1::JobRequest* request,
                      v1::JobInfo* response) override {
    if (grpc::Status a = c_.CheckAuth(*context); !a.ok()) return a;
    std::shared_ptr<Job> job = c_.FindJob(request->job_id());
    if (job == nullptr) return NotFound(request->job_id());
    std::lock_guard<std::mutex> lock(c_.mu_);
    *response = job->Info(true);
    response->set_queue_position(c_.scheduler_.QueuePosition(job->seq));
    return grpc::Status::OK;
  }

  grpc::Status CancelJob(grpc::ServerContext* context, const v1::JobRequest* request,
                         v1::JobInfo* response) override {
    if (grpc::Status a = c_.CheckAuth(*context); !a.ok()) return a;
    std::shared_ptr<Job> job = c_.FindJob(request->job_id());
    if (job == nullptr) return NotFound(request->job_id());
    std::lock_guard<std::mutex> lock(c_.mu_);
    c_.EndJobLocked(*job, v1::JOB_STATE_CANCELLED, v1::FINISH_REASON_CANCELLED,
                    "cancelled by the client", grpc::StatusCode::CANCELLED);
    *response = job->Info(false);
    return grpc::Status::OK;
  }

  grpc::Status ListJobs(grpc::ServerContext* context, const v1::ListJobsRequest* request,
                        v1::ListJobsResponse* response) override {
    if (grpc::Status a = c_.CheckAuth(*context); !a.ok()) return a;
    if (request->limit() < 0) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("limit must be >= 0, got ", request->limit()));
    }
    *response = c_.ListJobs(*request);
    return grpc::Status::OK;
  }

  grpc::Status ModelInfo(grpc::ServerContext* context, const v1::ModelInfoRequest*,
                         v1::ModelInfoResponse* response) override {
    if (grpc::Status a = c_.CheckAuth(*context); !a.ok()) return a;
    *response = c_.ModelInfo();
    return grpc::Status::OK;
  }

 private:
  static grpc::Status NotFound(const std::string& id) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat("no job '", id, "' (unknown, or ended and forgotten)"));
  }
  Coordinator& c_;
};

class Coordinator::WorkerService final : public v1::WorkerControl::Service {
 public:
  explicit WorkerService(Coordinator& c) : c_(c) {}
  grpc::Status Connect(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::WorkerCommand, v1::WorkerEvent>* stream) override {
    return c_.ServeWorker(*context, *stream);
  }

 private:
  Coordinator& c_;
};

Coordinator::Coordinator(const CoordinatorOptions& options, std::unique_ptr<Tokenizer> tokenizer,
                         const ModelConfig& config, ServingMetrics* metrics)
    : options_(options),
      tokenizer_(std::move(tokenizer)),
      config_(config),
      fingerprint_(TokenizerFingerprint(*tokenizer_)),
      metrics_(metrics),
      client_service_(std::make_unique<ClientService>(*this)),
      worker_service_(std::make_unique<WorkerService>(*this)),
      scheduler_(options.scheduler) {}

Coordinator::~Coordinator() { Shutdown(); }

grpc::Service* Coordinator::client_service() { return client_service_.get(); }
grpc::Service* Coordinator::worker_service() { return worker_service_.get(); }

grpc::Status Coordinator::StreamJob(grpc::ServerContext& context, const std::shared_ptr<Job>& job,
                                    grpc::ServerWriter<v1::GenerateResponse>& writer) {
  size_t sent_tokens = 0, sent_text = 0;
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    v1::GenerateResponse msg;
    msg.set_job_id(job->id);
    for (size_t i = sent_tokens; i < job->tokens.size(); ++i) msg.add_token_ids(job->tokens[i]);
    if (job->released > sent_text) {
      msg.set_text(job->text.substr(sent_text, job->released - sent_text));
    }
    sent_tokens = job->tokens.size();
    sent_text = std::max(sent_text, job->released);
    const bool ended = job->ended_state();
    if (ended && job->state == v1::JOB_STATE_FAILED) {
      const grpc::Status failed(job->error_code == grpc::StatusCode::OK
                                    ? grpc::StatusCode::INTERNAL : job->error_code,
                                job->error);
      lock.unlock();
      if (msg.token_ids_size() > 0 || !msg.text().empty()) writer.Write(msg);
      return failed;
    }
    if (ended) {
      msg.set_done(true);
      msg.set_state(job->state);
      msg.set_finish_reason(job->reason);
      *msg.mutable_report() = job->Info(false).report();
    }
    const bool write = ended || msg.token_ids_size() > 0 || !msg.text().empty();
    if (write) {
      lock.unlock();
      const bool ok = writer.Write(msg);
      lock.lock();
      if (ended) return grpc::Status::OK;
      if (!ok) {
        EndJobLocked(*job, v1::JOB_STATE_CANCELLED, v1::FINISH_REASON_CANCELLED,
                     "the client went away", grpc::StatusCode::CANCELLED);
        return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
      }
      continue;
    }
    if (context.IsCancelled()) {
      const bool past_deadline = absl::Now() >= job->deadline;
      EndJobLocked(*job, past_deadline ? v1::JOB_STATE_FINISHED : v1::JOB_STATE_CANCELLED,
                   past_deadline ? v1::FINISH_REASON_DEADLINE : v1::FINISH_REASON_CANCELLED,
                   "the client cancelled the call", grpc::StatusCode::CANCELLED);
      return grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled");
    }
    job->changed.wait_for(lock, std::chrono::milliseconds(100));
  }
}

}  // namespace resa::serving
