// Prometheus metrics of the coordinator (DESIGN.md §6): names carry the `resa_` prefix and a unit
// suffix (`_seconds`, `_total`); served over HTTP at /metrics by prometheus-cpp's Exposer.
//
// Exported series (rates such as tokens/s come from rate() over the counters):
//   resa_queue_requests, resa_queue_tokens                         gauges
//   resa_running_sequences                                         gauge
//   resa_prompt_tokens_total, resa_generated_tokens_total          counters
//   resa_time_to_first_token_seconds, resa_time_per_output_token_seconds,
//   resa_queue_time_seconds, resa_step_duration_seconds            histograms, 100 us .. 60 s
//   resa_step_batch_size                                           histogram, 1 .. 256
//   resa_rectification_passes_total, resa_rectified_sequences_total,
//   resa_rectified_tokens_total                                    counters
//   resa_attention_blocks_read_total, resa_attention_blocks_total  counters
//   resa_attention_blocks_read_ratio                               gauge (read / total, cumulative)
//   resa_kv_pages_used, resa_kv_pages_capacity                     gauges
//   resa_jobs_ended_total{state}                                   counter
//   resa_worker_ready                                              gauge, 0 or 1
//   resa_requests_rejected_total{reason}                           counter
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace prometheus {
class Counter;
class Exposer;
class Gauge;
class Histogram;
class Registry;
template <typename T>
class Family;
}  // namespace prometheus

namespace resa::serving {

// Every method is thread-safe and cheap enough to call once per decode step.
class ServingMetrics {
 public:
  // `listen` is "host:port" for the HTTP endpoint (port 0 picks a free one, see port()); empty
  // keeps the metrics in memory only (Serialize()). A port that cannot be bound is an
  // UNAVAILABLE error naming the address.
  static absl::StatusOr<std::unique_ptr<ServingMetrics>> Create(const std::string& listen);
  ~ServingMetrics();

  ServingMetrics(const ServingMetrics&) = delete;
  ServingMetrics& operator=(const ServingMetrics&) = delete;

  void SetQueue(int requests, int64_t tokens);
  void SetRunning(int sequences);
  void AddGeneratedTokens(int64_t n);
  void AddPromptTokens(int64_t n);
  void ObserveTimeToFirstToken(double seconds);
  void ObserveTimePerToken(double seconds);
  void ObserveQueueTime(double seconds);
  // One decode step (a plan's forward over `batch` sequences) and its wall time.
  void ObserveStep(double seconds, int batch);
  // One plan: the worker's time executing it (prefill, steps, rectification) and what the
  // round trip added on top (gRPC both ways, event handling, sampling and scheduling): the
  // control plane's overhead is the ratio of the two sums.
  void ObservePlan(double worker_seconds, double overhead_seconds);
  void AddRectifications(int64_t passes, int64_t sequences, int64_t tokens);
  // Attention blocks read by decode steps, and what dense steps would have read.
  void AddBlocks(int64_t read, int64_t total);
  void SetKvPages(int64_t used, int64_t total);
  // A job reached a terminal state; the label is e.g. "length", "eos", "cancelled", "failed",
  // "deadline" (the caller's choice, kept short and from a small set), exported in lower case.
  void JobEnded(std::string_view state_or_reason);
  void SetWorkerReady(bool ready);
  // A request refused before queueing: "queue_full", "invalid_argument", "unavailable", ...
  // (exported in lower case).
  void Rejected(std::string_view why);

  // The Prometheus text exposition of every series (what GET /metrics returns).
  std::string Serialize() const;
  // The bound HTTP port, or 0 without an HTTP endpoint.
  int port() const { return port_; }

 private:
  ServingMetrics();

  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;

  prometheus::Gauge* queue_requests_ = nullptr;
  prometheus::Gauge* queue_tokens_ = nullptr;
  prometheus::Gauge* running_ = nullptr;
  prometheus::Counter* prompt_tokens_ = nullptr;
  prometheus::Counter* generated_tokens_ = nullptr;
  prometheus::Histogram* ttft_ = nullptr;
  prometheus::Histogram* tpot_ = nullptr;
  prometheus::Histogram* queue_time_ = nullptr;
  prometheus::Histogram* step_time_ = nullptr;
  prometheus::Histogram* step_batch_ = nullptr;
  prometheus::Counter* plan_worker_ = nullptr;
  prometheus::Counter* plan_overhead_ = nullptr;
  prometheus::Counter* rect_passes_ = nullptr;
  prometheus::Counter* rect_sequences_ = nullptr;
  prometheus::Counter* rect_tokens_ = nullptr;
  prometheus::Counter* blocks_read_ = nullptr;
  prometheus::Counter* blocks_total_ = nullptr;
  prometheus::Gauge* blocks_ratio_ = nullptr;
  prometheus::Gauge* kv_used_ = nullptr;
  prometheus::Gauge* kv_capacity_ = nullptr;
  prometheus::Gauge* worker_ready_ = nullptr;
  prometheus::Family<prometheus::Counter>* jobs_ended_ = nullptr;
  prometheus::Family<prometheus::Counter>* rejected_ = nullptr;

  // Guards the cumulative block sums so that the ratio gauge matches the two counters.
  std::mutex blocks_mu_;
  int64_t blocks_read_sum_ = 0;
  int64_t blocks_total_sum_ = 0;
};

}  // namespace resa::serving
