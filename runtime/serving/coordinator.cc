#include "runtime/serving/coordinator.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "runtime/core/status.h"
#include "runtime/serving/support/logging.h"
#include "runtime/serving/support/security.h"

namespace resa::serving {

namespace {

std::string NewJobId() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mu);
  return absl::StrFormat("job-%016x", rng());
}

// "LENGTH" for FINISH_REASON_LENGTH, "CANCELLED" for JOB_STATE_CANCELLED (logs, metric labels).
std::string ReasonName(v1::FinishReason r) {
  return std::string(absl::StripPrefix(v1::FinishReason_Name(r), "FINISH_REASON_"));
}
std::string StateName(v1::JobState s) {
  return std::string(absl::StripPrefix(v1::JobState_Name(s), "JOB_STATE_"));
}

}  // namespace

absl::Status CoordinatorOptions::Validate() const {
  RESA_RETURN_IF_ERROR(scheduler.Validate());
  if (heartbeat_timeout < absl::Seconds(1)) {
    return absl::InvalidArgumentError("--heartbeat-timeout must be >= 1 second");
  }
  if (history < 1) return absl::InvalidArgumentError("--history must be >= 1");
  if (limits.default_max_tokens < 1) {
    return absl::InvalidArgumentError("--default-max-tokens must be >= 1");
  }
  return limits.default_resa.Validate();
}

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(
    const CoordinatorOptions& options, std::unique_ptr<Tokenizer> tokenizer,
    const ModelConfig& config, ServingMetrics* metrics) {
  RESA_RETURN_IF_ERROR(options.Validate());
  if (tokenizer == nullptr) return absl::InvalidArgumentError("the coordinator needs a tokenizer");
  return std::unique_ptr<Coordinator>(
      new Coordinator(options, std::move(tokenizer), config, metrics));
}

void Coordinator::Start(grpc::HealthCheckServiceInterface* health) {
  std::lock_guard<std::mutex> lock(mu_);
  health_ = health;
  SetServingLocked(false);
  planner_ = std::thread([this] { PlanLoop(); });
}

void Coordinator::BeginDrain() {
  std::lock_guard<std::mutex> lock(mu_);
  if (draining_) return;
  draining_ = true;
  SetServingLocked(false);
  LogEvent(spdlog::level::info, "draining",
           {{"queued", scheduler_.queued()}, {"running", scheduler_.running()}});
}

int32_t Coordinator::ActiveJobs() {
  std::lock_guard<std::mutex> lock(mu_);
  return scheduler_.queued() + scheduler_.running();
}

bool Coordinator::WorkerReady() {
  std::lock_guard<std::mutex> lock(mu_);
  return worker_ != nullptr;
}

void Coordinator::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    draining_ = true;
    for (auto& [id, job] : jobs_) {
      if (!job->ended_state()) {
        EndJobLocked(*job, v1::JOB_STATE_CANCELLED, v1::FINISH_REASON_CANCELLED,
                     "the coordinator is shutting down", grpc::StatusCode::UNAVAILABLE);
      }
    }
    SetServingLocked(false);
    plan_cv_.notify_all();
  }
  if (planner_.joinable()) planner_.join();
  v1::WorkerCommand cmd;
  cmd.mutable_shutdown();
  if (WriteCommand(cmd)) {
    // Give the worker a moment to read it before its stream is ended.
    for (int i = 0; i < 50 && WorkerReady(); ++i) absl::SleepFor(absl::Milliseconds(20));
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (worker_ != nullptr && worker_->context != nullptr) worker_->context->TryCancel();
}

grpc::Status Coordinator::CheckAuth(const grpc::ServerContext& context) const {
  return CheckBearerToken(context, options_.token);
}

void Coordinator::SetServingLocked(bool serving) {
  if (health_ != nullptr) {
    health_->SetServingStatus(serving);
    health_->SetServingStatus("resa.v1.Resa", serving);
  }
  if (metrics_ != nullptr) metrics_->SetWorkerReady(serving);
}

void Coordinator::UpdateGaugesLocked() {
  if (metrics_ == nullptr) return;
  metrics_->SetQueue(scheduler_.queued(), scheduler_.queued_tokens());
  metrics_->SetRunning(scheduler_.running());
  if (worker_ != nullptr) {
    metrics_->SetKvPages(scheduler_.pages_reserved(), worker_->info.kv_pages());
  }
}

absl::StatusOr<std::shared_ptr<Job>> Coordinator::SubmitJob(const v1::GenerateRequest& request,
                                                            absl::Time grpc_deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  if (draining_) {
    return absl::UnavailableError("the coordinator is draining: not accepting new jobs");
  }
  if (worker_ == nullptr) {
    return absl::UnavailableError("no worker group is registered: try again once health is SERVING");
  }
  RequestLimits limits = options_.limits;
  limits.max_context = worker_->info.max_context();
  lock.unlock();
  // Encoding is the expensive part: outside the lock.
  auto resolved = ResolveRequest(request, *tokenizer_, limits);
  if (!resolved.ok()) {
    if (metrics_ != nullptr) metrics_->Rejected("invalid_argument");
    return resolved.status();
  }
  lock.lock();
  if (draining_ || worker_ == nullptr) {
    return absl::UnavailableError("the worker group went away while the request was read");
  }
  const uint64_t seq = next_seq_++;
  auto job = std::make_shared<Job>(NewJobId(), seq, *tokenizer_, resolved->stops);
  job->prompt = std::move(resolved->prompt);
  job->admit = std::move(resolved->admit);
  job->admit.set_seq(seq);
  job->client_tag = request.client_tag();
  if (resolved->timeout_seconds > 0) {
    job->deadline = job->submitted + absl::Seconds(resolved->timeout_seconds);
  }
  job->deadline = std::min(job->deadline, grpc_deadline);
  const int32_t f = job->admit.resa().mode() == v1::DECODE_MODE_RESA
                        ? job->admit.resa().rectify_every() : 0;
  absl::Status st = scheduler_.Enqueue(
      SeqRequest{seq, int32_t(job->prompt.size()), job->admit.max_tokens(), f});
  if (!st.ok()) {
    if (metrics_ != nullptr) {
      metrics_->Rejected(absl::IsResourceExhausted(st) ? "queue_full" : "invalid_argument");
    }
    return st;
  }
  jobs_[job->id] = job;
  by_seq_[seq] = job;
  if (metrics_ != nullptr) metrics_->AddPromptTokens(int64_t(job->prompt.size()));
  UpdateGaugesLocked();
  LogEvent(spdlog::level::debug, "job queued",
           {{"job", job->id}, {"prompt_tokens", job->prompt.size()},
            {"max_tokens", job->admit.max_tokens()}});
  plan_cv_.notify_all();
  return job;
}

std::shared_ptr<Job> Coordinator::FindJob(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : it->second;
}

void Coordinator::EndJobLocked(Job& job, v1::JobState state, v1::FinishReason why,
                               std::string error, grpc::StatusCode code) {
  if (job.ended_state()) return;
  if (!job.worker_done) {
    // Queued: leaves the queue now. Running: cancelled in the next plan, pages freed when the
    // worker reports it done.
    if (scheduler_.Cancel(job.seq)) job.worker_done = true;
  }
  job.error = std::move(error);
  job.error_code = code;
  job.End(state, why, absl::Now());
  if (metrics_ != nullptr) {
    metrics_->JobEnded(state == v1::JOB_STATE_FINISHED ? ReasonName(why) : StateName(state));
  }
  LogEvent(state == v1::JOB_STATE_FAILED ? spdlog::level::warn : spdlog::level::info, "job ended",
           {{"job", job.id},
            {"state", v1::JobState_Name(state)},
            {"reason", ReasonName(why)},
            {"prompt_tokens", job.prompt.size()},
            {"generated_tokens", job.tokens.size()},
            {"error", job.error}});
  if (job.worker_done) RetireLocked(job);
  UpdateGaugesLocked();
  plan_cv_.notify_all();
}

void Coordinator::RetireLocked(Job& job) {
  by_seq_.erase(job.seq);
  retired_.push_back(job.id);
  while (int32_t(retired_.size()) > options_.history) {
    jobs_.erase(retired_.front());
    retired_.pop_front();
  }
}

v1::ModelInfoResponse Coordinator::ModelInfo() {
  std::lock_guard<std::mutex> lock(mu_);
  v1::ModelInfoResponse r;
  r.set_model(options_.model_name);
  r.set_architecture(config_.arch_name);
  r.set_vocab_size(config_.vocab_size);
  r.set_num_layers(config_.num_layers);
  r.set_num_heads(config_.num_heads);
  r.set_num_kv_heads(config_.num_kv_heads);
  r.set_head_dim(config_.head_dim);
  r.set_worker_ready(worker_ != nullptr);
  *r.mutable_default_resa() = ToSettings(options_.limits.default_resa);
  if (worker_ != nullptr) {
    r.set_max_context(worker_->info.max_context());
    r.set_tp(worker_->info.tp());
    r.set_sp(worker_->info.sp());
    r.set_kv_pages(worker_->info.kv_pages());
    r.set_kv_pages_free(worker_->info.kv_pages() - scheduler_.pages_reserved());
    r.set_max_batch(worker_->info.max_batch());
  }
  return r;
}

v1::ListJobsResponse Coordinator::ListJobs(const v1::ListJobsRequest& request) {
  std::lock_guard<std::mutex> lock(mu_);
  const int32_t limit = request.limit() > 0 ? request.limit() : 100;
  std::vector<const Job*> picked;
  for (const auto& [id, job] : jobs_) {
    if (request.states_size() > 0 &&
        std::find(request.states().begin(), request.states().end(), job->state) ==
            request.states().end()) {
      continue;
    }
    picked.push_back(job.get());
  }
  // Newest first.
  std::sort(picked.begin(), picked.end(),
            [](const Job* a, const Job* b) { return a->seq > b->seq; });
  v1::ListJobsResponse out;
  for (size_t i = 0; i < picked.size() && int32_t(i) < limit; ++i) {
    v1::JobInfo info = picked[i]->Info(false);
    info.set_queue_position(scheduler_.QueuePosition(picked[i]->seq));
    *out.add_jobs() = std::move(info);
  }
  return out;
}

// ---- worker side ------------------------------------------------------------------------------

bool Coordinator::WriteCommand(const v1::WorkerCommand& command) {
  grpc::ServerReaderWriter<v1::WorkerCommand, v1::WorkerEvent>* stream = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (worker_ == nullptr) return false;
    stream = worker_->stream;
  }
  // The stream outlives this write: its handler waits for write_mu_ before it returns.
  std::lock_guard<std::mutex> wlock(write_mu_);
  return stream->Write(command);
}

void Coordinator::WorkerLostLocked(const std::string& reason) {
  if (worker_ == nullptr) return;
  LogEvent(stopping_ ? spdlog::level::info : spdlog::level::err,
           stopping_ ? "worker group released" : "worker group lost",
           {{"worker", worker_->info.worker_name()}, {"reason", reason}});
  for (uint64_t seq : scheduler_.Reset()) {
    auto it = by_seq_.find(seq);
    if (it == by_seq_.end()) continue;
    std::shared_ptr<Job> job = it->second;
    job->worker_done = true;
    if (!job->ended_state()) {
      EndJobLocked(*job, v1::JOB_STATE_FAILED, v1::FINISH_REASON_ERROR,
                   absl::StrCat("the worker group was lost: ", reason),
                   grpc::StatusCode::UNAVAILABLE);
    } else {
      RetireLocked(*job);
    }
  }
  if (worker_->context != nullptr) worker_->context->TryCancel();
  worker_.reset();
  SetServingLocked(false);
  UpdateGaugesLocked();
}

void Coordinator::HandleEventLocked(const v1::WorkerEvent& ev) {
  const absl::Time now = absl::Now();
  worker_->last_event = now;
  switch (ev.event_case()) {
    case v1::WorkerEvent::kStepTokens: {
      int64_t n = 0;
      for (const v1::SequenceTokens& st : ev.step_tokens().seqs()) {
        auto it = by_seq_.find(st.seq());
        if (it == by_seq_.end()) continue;
        Job& job = *it->second;
        if (job.ended_state()) continue;  // cancelled or stopped: tokens in flight are dropped
        if (job.state == v1::JOB_STATE_QUEUED) {
          job.state = v1::JOB_STATE_RUNNING;
          job.admitted = now;
        }
        const bool first = job.tokens.empty();
        bool stopped = false;
        for (int32_t t : st.tokens()) {
          ++n;
          if (job.AddToken(t, now)) {
            stopped = true;
            break;
          }
        }
        if (first && !job.tokens.empty() && metrics_ != nullptr) {
          metrics_->ObserveQueueTime(absl::ToDoubleSeconds(job.admitted - job.submitted));
          metrics_->ObserveTimeToFirstToken(absl::ToDoubleSeconds(job.first_token - job.submitted));
        }
        if (stopped) {
          EndJobLocked(job, v1::JOB_STATE_FINISHED, v1::FINISH_REASON_STOP);
        } else {
          job.changed.notify_all();
        }
      }
      if (metrics_ != nullptr) metrics_->AddGeneratedTokens(n);
      break;
    }
    case v1::WorkerEvent::kDone: {
      const v1::SequenceDone& d = ev.done();
      scheduler_.Finished(d.seq());
      auto it = by_seq_.find(d.seq());
      if (it == by_seq_.end()) break;
      std::shared_ptr<Job> job = it->second;
      job->worker_done = true;
      const v1::GenerationReport& r = d.report();
      job->report.set_decode_steps(r.decode_steps());
      job->report.set_sparse_steps(r.sparse_steps());
      job->report.set_blocks_read(r.blocks_read());
      job->report.set_blocks_total(r.blocks_total());
      job->report.set_rectifications(r.rectifications());
      job->report.set_rectified_tokens(r.rectified_tokens());
      if (metrics_ != nullptr) {
        metrics_->AddBlocks(r.blocks_read(), r.blocks_total());
        if (job->tokens.size() > 1) {
          metrics_->ObserveTimePerToken(absl::ToDoubleSeconds(job->last_token - job->first_token) /
                                        double(job->tokens.size() - 1));
        }
      }
      if (job->ended_state()) {
        RetireLocked(*job);
      } else if (d.reason() == v1::FINISH_REASON_ERROR) {
        EndJobLocked(*job, v1::JOB_STATE_FAILED, v1::FINISH_REASON_ERROR,
                     absl::StrCat("the worker failed the sequence: ", d.error()),
                     grpc::StatusCode::INTERNAL);
      } else if (d.reason() == v1::FINISH_REASON_CANCELLED) {
        EndJobLocked(*job, v1::JOB_STATE_CANCELLED, v1::FINISH_REASON_CANCELLED);
      } else {
        EndJobLocked(*job, v1::JOB_STATE_FINISHED, d.reason());
      }
      break;
    }
    case v1::WorkerEvent::kPlanDone: {
      const v1::PlanDone& p = ev.plan_done();
      worker_->plan_in_flight = false;
      worker_->last_plan_done = now;
      if (metrics_ != nullptr) {
        if (p.steps() > 0) metrics_->ObserveStep(p.step_seconds() / p.steps(), scheduler_.running());
        const double busy = p.prefill_seconds() + p.step_seconds() + p.rectify_seconds();
        metrics_->ObservePlan(busy, absl::ToDoubleSeconds(now - worker_->plan_sent) - busy);
      }
      plan_cv_.notify_all();
      break;
    }
    case v1::WorkerEvent::kHeartbeat:
      break;
    case v1::WorkerEvent::kFatal:
      WorkerLostLocked(absl::StrCat("the worker reported: ", ev.fatal()));
      break;
    default:
      break;
  }
  UpdateGaugesLocked();
}

grpc::Status Coordinator::ServeWorker(
    grpc::ServerContext& context,
    grpc::ServerReaderWriter<v1::WorkerCommand, v1::WorkerEvent>& stream) {
  grpc::Status auth = CheckAuth(context);
  if (!auth.ok()) return auth;
  v1::WorkerEvent first;
  if (!stream.Read(&first) || first.event_case() != v1::WorkerEvent::kRegister) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "a worker must send WorkerRegister first");
  }
  const v1::WorkerRegister& reg = first.register_();
  auto refuse = [&](const std::string& why) {
    LogEvent(spdlog::level::warn, "worker refused", {{"worker", reg.worker_name()}, {"why", why}});
    v1::WorkerCommand cmd;
    cmd.set_refuse(why);
    stream.Write(cmd);
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, why);
  };
  if (reg.tokenizer_fingerprint() != fingerprint_ || reg.vocab_size() != config_.vocab_size) {
    return refuse(absl::StrCat("the worker's model (", reg.model(), ", vocab ", reg.vocab_size(),
                               ") does not match the coordinator's (", options_.model_name,
                               ", vocab ", config_.vocab_size, "): tokenizers differ"));
  }
  if (reg.max_context() < 2 || reg.max_batch() < 1 || reg.kv_pages() < 1) {
    return refuse("the worker registered no capacity (context, batch or KV pages)");
  }
  uint64_t generation = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return refuse("the coordinator is shutting down");
    if (worker_ != nullptr) {
      return refuse(absl::StrCat("a worker group is already registered (",
                                 worker_->info.worker_name(), ")"));
    }
    worker_ = std::make_unique<Worker>();
    generation = worker_->generation = ++worker_generation_;
    worker_->context = &context;
    worker_->stream = &stream;
    worker_->info = reg;
    worker_->last_event = absl::Now();
    scheduler_.SetCapacity(Capacity{reg.kv_pages(), reg.max_context(), reg.max_batch(), reg.sp()});
    if (!draining_) SetServingLocked(true);
    UpdateGaugesLocked();
    plan_cv_.notify_all();
  }
  LogEvent(spdlog::level::info, "worker registered",
           {{"worker", reg.worker_name()}, {"tp", reg.tp()}, {"sp", reg.sp()},
            {"kv_pages", reg.kv_pages()}, {"max_context", reg.max_context()},
            {"max_batch", reg.max_batch()}});
  v1::WorkerEvent ev;
  std::string lost = "the connection closed";
  while (stream.Read(&ev)) {
    std::lock_guard<std::mutex> lock(mu_);
    if (worker_ == nullptr || worker_->generation != generation) {
      lost.clear();
      break;
    }
    HandleEventLocked(ev);
    if (worker_ == nullptr) {  // a fatal event
      lost.clear();
      break;
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (worker_ != nullptr && worker_->generation == generation) {
      WorkerLostLocked(stopping_ ? "the coordinator shut down" : lost);
    }
  }
  // No writer may still hold the stream when the handler returns.
  std::lock_guard<std::mutex> wlock(write_mu_);
  return grpc::Status::OK;
}

// ---- planning ---------------------------------------------------------------------------------

void Coordinator::ExpireDeadlinesLocked(absl::Time now) {
  // Ending a job may retire it from by_seq_: collect first.
  std::vector<std::shared_ptr<Job>> expired;
  for (auto& [seq, job] : by_seq_) {
    if (!job->ended_state() && now >= job->deadline) expired.push_back(job);
  }
  for (auto& job : expired) EndJobLocked(*job, v1::JOB_STATE_FINISHED, v1::FINISH_REASON_DEADLINE);
}

void Coordinator::PlanLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    const absl::Time now = absl::Now();
    ExpireDeadlinesLocked(now);

    if (worker_ != nullptr && now - worker_->last_event > options_.heartbeat_timeout) {
      WorkerLostLocked(absl::StrCat("no event for ",
                                    absl::FormatDuration(now - worker_->last_event),
                                    " (--heartbeat-timeout)"));
    }
    if (worker_ != nullptr && !worker_->plan_in_flight) {
      PlanDraft draft = scheduler_.NextPlan();
      if (!draft.empty()) {
        v1::WorkerCommand cmd;
        v1::Plan* plan = cmd.mutable_plan();
        plan->set_plan_id(next_plan_++);
        plan->mutable_cancel()->Add(draft.cancel.begin(), draft.cancel.end());
        for (uint64_t seq : draft.admit) {
          Job& job = *by_seq_.at(seq);
          job.state = v1::JOB_STATE_RUNNING;
          job.admitted = now;
          v1::AdmitSequence* a = plan->add_admit();
          *a = job.admit;
          a->mutable_prompt()->Add(job.prompt.begin(), job.prompt.end());
        }
        for (const auto& after : draft.rectify) {
          plan->add_steps()->mutable_rectify()->Add(after.begin(), after.end());
        }
        int64_t passes = 0, seqs = 0;
        for (const auto& after : draft.rectify) {
          passes += after.empty() ? 0 : 1;
          seqs += int64_t(after.size());
        }
        if (metrics_ != nullptr && passes > 0) {
          metrics_->AddRectifications(passes, seqs, draft.rectify_tokens);
        }
        // Idle time of a worker that had sequences to run also counts as overhead.
        if (metrics_ != nullptr && worker_->last_plan_done != absl::InfinitePast() &&
            draft.admit.size() < size_t(scheduler_.running())) {
          metrics_->ObservePlan(0.0, absl::ToDoubleSeconds(now - worker_->last_plan_done));
        }
        worker_->plan_in_flight = true;
        worker_->plan_sent = now;
        UpdateGaugesLocked();
        lock.unlock();
        const bool sent = WriteCommand(cmd);
        lock.lock();
        if (!sent && worker_ != nullptr) WorkerLostLocked("writing a plan to the worker failed");
        continue;
      }
    }
    plan_cv_.wait_for(lock, std::chrono::milliseconds(50));
  }
}

}  // namespace resa::serving
