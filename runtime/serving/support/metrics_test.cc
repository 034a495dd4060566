#include "runtime/serving/support/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace resa::serving {
namespace {

bool Contains(const std::string& text, const std::string& line) {
  return text.find(line) != std::string::npos;
}

TEST(ServingMetrics, ExpositionReflectsUpdates) {
  absl::StatusOr<std::unique_ptr<ServingMetrics>> m = ServingMetrics::Create("");
  ASSERT_TRUE(m.ok()) << m.status();
  ServingMetrics& metrics = **m;
  EXPECT_EQ(metrics.port(), 0);
  metrics.SetQueue(3, 1200);
  metrics.SetRunning(5);
  metrics.AddGeneratedTokens(7);
  metrics.AddGeneratedTokens(-2);  // ignored: counters only go up
  metrics.AddPromptTokens(40);
  metrics.ObserveTimeToFirstToken(0.3);
  metrics.ObserveTimePerToken(0.02);
  metrics.ObserveQueueTime(0.00005);
  metrics.ObserveStep(0.004, 6);
  metrics.AddRectifications(1, 2, 64);
  metrics.AddBlocks(10, 40);
  metrics.AddBlocks(0, 60);
  metrics.SetKvPages(17, 256);
  metrics.JobEnded("finished");
  metrics.JobEnded("finished");
  metrics.JobEnded("CANCELLED");  // labels are exported in lower case
  metrics.SetWorkerReady(true);
  metrics.Rejected("queue_full");
  const std::string text = metrics.Serialize();
  for (const char* line :
       {"resa_queue_requests 3", "resa_queue_tokens 1200", "resa_running_sequences 5",
        "resa_generated_tokens_total 7", "resa_prompt_tokens_total 40",
        "resa_time_to_first_token_seconds_count 1", "resa_time_per_output_token_seconds_sum 0.02",
        "resa_queue_time_seconds_bucket{le=\"0.0001\"} 1", "resa_step_duration_seconds_count 1",
        "resa_step_batch_size_bucket{le=\"4\"} 0", "resa_step_batch_size_bucket{le=\"8\"} 1",
        "resa_rectification_passes_total 1", "resa_rectified_sequences_total 2",
        "resa_rectified_tokens_total 64", "resa_attention_blocks_read_total 10",
        "resa_attention_blocks_total 100", "resa_attention_blocks_read_ratio 0.1",
        "resa_kv_pages_used 17", "resa_kv_pages_capacity 256",
        "resa_jobs_ended_total{state=\"finished\"} 2",
        "resa_jobs_ended_total{state=\"cancelled\"} 1", "resa_worker_ready 1",
        "resa_requests_rejected_total{reason=\"queue_full\"} 1",
        "resa_time_to_first_token_seconds_bucket{le=\"60\"} 1"}) {
    EXPECT_TRUE(Contains(text, line)) << "missing '" << line << "' in:\n" << text;
  }
}

TEST(ServingMetrics, ConcurrentUpdatesAreCounted) {
  auto metrics = std::move(ServingMetrics::Create("")).value();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) {
        metrics->AddGeneratedTokens(1);
        metrics->AddBlocks(1, 4);
        metrics->JobEnded("finished");
      }
    });
  }
  for (std::thread& t : threads) t.join();
  const std::string text = metrics->Serialize();
  EXPECT_TRUE(Contains(text, "resa_generated_tokens_total 4000")) << text;
  EXPECT_TRUE(Contains(text, "resa_attention_blocks_read_ratio 0.25")) << text;
  EXPECT_TRUE(Contains(text, "resa_jobs_ended_total{state=\"finished\"} 4000")) << text;
}

// GET /metrics over a plain socket; returns the whole HTTP response.
std::string HttpGet(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string req = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
    if (write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
      char buf[4096];
      ssize_t n;
      while ((n = read(fd, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
    }
  }
  close(fd);
  return out;
}

TEST(ServingMetrics, ServesHttpAndReportsBusyPort) {
  absl::StatusOr<std::unique_ptr<ServingMetrics>> m = ServingMetrics::Create("127.0.0.1:0");
  ASSERT_TRUE(m.ok()) << m.status();
  const int port = (*m)->port();
  ASSERT_GT(port, 0);
  (*m)->SetWorkerReady(true);
  const std::string response = HttpGet(port);
  EXPECT_TRUE(Contains(response, "200 OK")) << response;
  EXPECT_TRUE(Contains(response, "resa_worker_ready 1")) << response;

  const std::string busy = "127.0.0.1:" + std::to_string(port);
  absl::StatusOr<std::unique_ptr<ServingMetrics>> second = ServingMetrics::Create(busy);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(Contains(std::string(second.status().message()), busy)) << second.status();
}

}  // namespace
}  // namespace resa::serving
