// resa-coordinator's core (DESIGN.md §6): the client API (resa.v1.Resa), the worker-control
// stream (resa.v1.WorkerControl), the job table, and the planning thread that drives one worker
// group with continuous batching and the rectification schedule.
//
// Threads: gRPC handler threads (client calls; one per worker stream, which reads its events)
// and one planning thread. One mutex guards all state; a job's condition variable wakes its
// Generate stream. At most one plan is in flight: the next is built when the worker reports the
// previous one done, so cancellations and new admissions take effect within one plan.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "resa.grpc.pb.h"
#include "runtime/model/model_config.h"
#include "runtime/serving/job.h"
#include "runtime/serving/request.h"
#include "runtime/serving/scheduler.h"
#include "runtime/serving/support/metrics.h"

namespace resa::serving {

struct CoordinatorOptions {
  std::string model_name;
  SchedulerOptions scheduler;
  RequestLimits limits;                         // max_context comes from the worker
  absl::Duration heartbeat_timeout = absl::Seconds(10);
  int32_t history = 1024;                       // ended jobs kept for GetJob / ListJobs
  std::string token;                            // bearer token every call must carry; empty: none

  absl::Status Validate() const;
};

class Coordinator {
 public:
  // `tokenizer`: the model's (prompts are encoded and outputs decoded here, so workers deal in
  // token ids only). `metrics` may be null.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Create(
      const CoordinatorOptions& options, std::unique_ptr<Tokenizer> tokenizer,
      const ModelConfig& config, ServingMetrics* metrics);
  ~Coordinator();

  grpc::Service* client_service();
  grpc::Service* worker_service();

  // After the server is built: health statuses go to `health` (may be null); starts planning.
  void Start(grpc::HealthCheckServiceInterface* health);
  // New requests get UNAVAILABLE; queued and running jobs go on.
  void BeginDrain();
  // Queued + running jobs.
  int32_t ActiveJobs();
  // Ends every job that has not ended (CANCELLED, "the coordinator is shutting down"), tells the
  // worker group to shut down, stops planning and ends the worker stream.
  void Shutdown();

  // For `resa serve` and tests: true once a worker group is registered.
  bool WorkerReady();

 private:
  class ClientService;
  class WorkerService;
  struct Worker {
    uint64_t generation = 0;
    grpc::ServerContext* context = nullptr;
    grpc::ServerReaderWriter<v1::WorkerCommand, v1::WorkerEvent>* stream = nullptr;
    v1::WorkerRegister info;
    absl::Time last_event;
    bool plan_in_flight = false;
    absl::Time plan_sent;
    absl::Time last_plan_done = absl::InfinitePast();
  };

  Coordinator(const CoordinatorOptions& options, std::unique_ptr<Tokenizer> tokenizer,
              const ModelConfig& config, ServingMetrics* metrics);

  // Client side (handlers).
  grpc::Status CheckAuth(const grpc::ServerContext& context) const;
  absl::StatusOr<std::shared_ptr<Job>> SubmitJob(const v1::GenerateRequest& request,
                                                 absl::Time grpc_deadline);
  std::shared_ptr<Job> FindJob(const std::string& id);
  // Ends a job that has not ended; a running sequence is cancelled in the next plan.
  void EndJobLocked(Job& job, v1::JobState state, v1::FinishReason why, std::string error = {},
                    grpc::StatusCode code = grpc::StatusCode::OK);
  grpc::Status StreamJob(grpc::ServerContext& context, const std::shared_ptr<Job>& job,
                         grpc::ServerWriter<v1::GenerateResponse>& writer);
  v1::ModelInfoResponse ModelInfo();
  v1::ListJobsResponse ListJobs(const v1::ListJobsRequest& request);

  // Worker side.
  grpc::Status ServeWorker(grpc::ServerContext& context,
                           grpc::ServerReaderWriter<v1::WorkerCommand, v1::WorkerEvent>& stream);
  void HandleEventLocked(const v1::WorkerEvent& event);
  void WorkerLostLocked(const std::string& reason);
  bool WriteCommand(const v1::WorkerCommand& command);  // outside mu_

  // Planning thread.
  void PlanLoop();
  void ExpireDeadlinesLocked(absl::Time now);
  void RetireLocked(Job& job);  // the worker is done with it: history bookkeeping
  void SetServingLocked(bool serving);
  void UpdateGaugesLocked();

  const CoordinatorOptions options_;
  const std::unique_ptr<Tokenizer> tokenizer_;
  const ModelConfig config_;
  const uint64_t fingerprint_;
  ServingMetrics* const metrics_;
  std::unique_ptr<ClientService> client_service_;
  std::unique_ptr<WorkerService> worker_service_;

  std::mutex mu_;
  std::condition_variable plan_cv_;
  BatchScheduler scheduler_;
  std::map<std::string, std::shared_ptr<Job>> jobs_;
  std::map<uint64_t, std::shared_ptr<Job>> by_seq_;  // jobs the worker may still send events for
  std::deque<std::string> retired_;                  // ended job ids, oldest first
  std::unique_ptr<Worker> worker_;
  uint64_t worker_generation_ = 0;
  uint64_t next_seq_ = 1;
  uint64_t next_plan_ = 1;
  bool draining_ = false;
  bool stopping_ = false;
  grpc::HealthCheckServiceInterface* health_ = nullptr;
  std::thread planner_;
  std::mutex write_mu_;  // one writer on the worker stream at a time
};

}  // namespace resa::serving
