#include "runtime/serving/support/metrics.h"

#include <exception>
#include <utility>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "runtime/core/status.h"

namespace resa::serving {
namespace {

// Latency buckets from 100 us (a GPU decode step of a small batch) to 60 s (a long CPU prefill
// or a request that waited in a full queue), about three per decade.
const prometheus::Histogram::BucketBoundaries& LatencyBuckets() {
  static const prometheus::Histogram::BucketBoundaries kBuckets = {
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
      0.1,    0.25,    0.5,    1.0,   2.5,    5.0,   10.0, 30.0,  60.0};
  return kBuckets;
}

const prometheus::Histogram::BucketBoundaries& BatchBuckets() {
  static const prometheus::Histogram::BucketBoundaries kBuckets = {1, 2, 4, 8, 16, 32, 64, 128,
                                                                   256};
  return kBuckets;
}

prometheus::Gauge* AddGauge(prometheus::Registry& registry, const std::string& name,
                            const std::string& help) {
  return &prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add({});
}

prometheus::Counter* AddCounter(prometheus::Registry& registry, const std::string& name,
                                const std::string& help) {
  return &prometheus::BuildCounter().Name(name).Help(help).Register(registry).Add({});
}

prometheus::Histogram* AddHistogram(prometheus::Registry& registry, const std::string& name,
                                    const std::string& help,
                                    const prometheus::Histogram::BucketBoundaries& buckets) {
  return &prometheus::BuildHistogram().Name(name).Help(help).Register(registry).Add({}, buckets);
}

// Counters only go up: negative deltas (a caller's bug) are dropped rather than thrown on.
void Increment(prometheus::Counter* counter, int64_t n) {
  if (n > 0) counter->Increment(static_cast<double>(n));
}

}  // namespace

ServingMetrics::ServingMetrics() : registry_(std::make_shared<prometheus::Registry>()) {
  prometheus::Registry& r = *registry_;
  queue_requests_ = AddGauge(r, "resa_queue_requests", "Requests waiting in the queue.");
  queue_tokens_ = AddGauge(r, "resa_queue_tokens",
                           "Tokens (prompt + max new) of the requests waiting in the queue.");
  running_ = AddGauge(r, "resa_running_sequences", "Sequences admitted to a worker and decoding.");
  prompt_tokens_ = AddCounter(r, "resa_prompt_tokens_total", "Prompt tokens admitted.");
  generated_tokens_ = AddCounter(r, "resa_generated_tokens_total", "Tokens generated.");
  ttft_ = AddHistogram(r, "resa_time_to_first_token_seconds",
                       "Submission to first generated token.", LatencyBuckets());
  tpot_ = AddHistogram(r, "resa_time_per_output_token_seconds",
                       "Mean time per generated token after the first, per job.",
                       LatencyBuckets());
  queue_time_ = AddHistogram(r, "resa_queue_time_seconds", "Submission to admission.",
                             LatencyBuckets());
  step_time_ = AddHistogram(r, "resa_step_duration_seconds",
                            "Wall time of one batched decode step.", LatencyBuckets());
  step_batch_ = AddHistogram(r, "resa_step_batch_size", "Sequences in one decode step.",
                             BatchBuckets());
  plan_worker_ = AddCounter(r, "resa_plan_worker_seconds_total",
                            "Worker time spent executing plans (prefill, decode, rectification).");
  plan_overhead_ = AddCounter(r, "resa_plan_overhead_seconds_total",
                              "Plan round-trip time beyond the worker's execution time.");
  rect_passes_ = AddCounter(r, "resa_rectification_passes_total",
                            "Dense rectification passes (each may cover several sequences).");
  rect_sequences_ = AddCounter(r, "resa_rectified_sequences_total",
                               "Sequence rectifications, summed over passes.");
  rect_tokens_ = AddCounter(r, "resa_rectified_tokens_total", "Tokens re-run by rectification.");
  blocks_read_ = AddCounter(r, "resa_attention_blocks_read_total",
                            "KV blocks read by decode steps (over layers and KV heads).");
  blocks_total_ = AddCounter(r, "resa_attention_blocks_total",
                             "KV blocks dense decode steps would have read.");
  blocks_ratio_ = AddGauge(r, "resa_attention_blocks_read_ratio",
                           "resa_attention_blocks_read_total / resa_attention_blocks_total.");
  kv_used_ = AddGauge(r, "resa_kv_pages_used", "KV cache pages in use (per rank).");
  kv_capacity_ = AddGauge(r, "resa_kv_pages_capacity", "KV cache pages (per rank).");
  worker_ready_ = AddGauge(r, "resa_worker_ready", "1 when a worker group is registered and ready.");
  jobs_ended_ = &prometheus::BuildCounter()
                     .Name("resa_jobs_ended_total")
                     .Help("Jobs that reached a terminal state, by state or reason.")
                     .Register(r);
  rejected_ = &prometheus::BuildCounter()
                   .Name("resa_requests_rejected_total")
                   .Help("Requests refused before queueing, by reason.")
                   .Register(r);
}

ServingMetrics::~ServingMetrics() = default;

absl::StatusOr<std::unique_ptr<ServingMetrics>> ServingMetrics::Create(const std::string& listen) {
  std::unique_ptr<ServingMetrics> metrics(new ServingMetrics());
  if (listen.empty()) return metrics;
  // prometheus-cpp (civetweb underneath) reports a failed bind by throwing; nothing escapes here.
  try {
    metrics->exposer_ = std::make_unique<prometheus::Exposer>(listen, /*num_threads=*/1);
    metrics->exposer_->RegisterCollectable(metrics->registry_);
    const std::vector<int> ports = metrics->exposer_->GetListeningPorts();
    metrics->port_ = ports.empty() ? 0 : ports.front();
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("metrics: cannot serve HTTP on ", listen,
                                               " (address in use or invalid?): ", e.what()));
  }
  return metrics;
}

void ServingMetrics::SetQueue(int requests, int64_t tokens) {
  queue_requests_->Set(requests);
  queue_tokens_->Set(static_cast<double>(tokens));
}

void ServingMetrics::SetRunning(int sequences) { running_->Set(sequences); }

void ServingMetrics::AddGeneratedTokens(int64_t n) { Increment(generated_tokens_, n); }

void ServingMetrics::AddPromptTokens(int64_t n) { Increment(prompt_tokens_, n); }

void ServingMetrics::ObserveTimeToFirstToken(double seconds) { ttft_->Observe(seconds); }

void ServingMetrics::ObserveTimePerToken(double seconds) { tpot_->Observe(seconds); }

void ServingMetrics::ObserveQueueTime(double seconds) { queue_time_->Observe(seconds); }

void ServingMetrics::ObserveStep(double seconds, int batch) {
  step_time_->Observe(seconds);
  step_batch_->Observe(batch);
}

void ServingMetrics::ObservePlan(double worker_seconds, double overhead_seconds) {
  if (worker_seconds > 0) plan_worker_->Increment(worker_seconds);
  if (overhead_seconds > 0) plan_overhead_->Increment(overhead_seconds);
}

void ServingMetrics::AddRectifications(int64_t passes, int64_t sequences, int64_t tokens) {
  Increment(rect_passes_, passes);
  Increment(rect_sequences_, sequences);
  Increment(rect_tokens_, tokens);
}

void ServingMetrics::AddBlocks(int64_t read, int64_t total) {
  std::lock_guard<std::mutex> lock(blocks_mu_);
  if (read > 0) blocks_read_sum_ += read;
  if (total > 0) blocks_total_sum_ += total;
  Increment(blocks_read_, read);
  Increment(blocks_total_, total);
  if (blocks_total_sum_ > 0) {
    blocks_ratio_->Set(static_cast<double>(blocks_read_sum_) /
                       static_cast<double>(blocks_total_sum_));
  }
}

void ServingMetrics::SetKvPages(int64_t used, int64_t total) {
  kv_used_->Set(static_cast<double>(used));
  kv_capacity_->Set(static_cast<double>(total));
}

void ServingMetrics::JobEnded(std::string_view state_or_reason) {
  jobs_ended_->Add({{"state", absl::AsciiStrToLower(AsAbsl(state_or_reason))}}).Increment();
}

void ServingMetrics::SetWorkerReady(bool ready) { worker_ready_->Set(ready ? 1 : 0); }

void ServingMetrics::Rejected(std::string_view why) {
  rejected_->Add({{"reason", absl::AsciiStrToLower(AsAbsl(why))}}).Increment();
}

std::string ServingMetrics::Serialize() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace resa::serving
