// One client request as the coordinator tracks it: its settings, state, tokens, and the text
// released to the client. Text is cut only at whole UTF-8 characters (StreamDecoder), and held
// back while its tail could still become one of the request's stop strings.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "grpcpp/support/status.h"
#include "resa.pb.h"
#include "runtime/tokenizer/tokenizer.h"

namespace resa::serving {

// Finds stop strings in a growing text and says how much of it is safe to release.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  // `text` grew (only appended to since the last call). Returns the position of the earliest stop
  // string that ends after `checked` (bytes already searched), or npos.
  size_t Find(const std::string& text) ;
  // Bytes of `text` that can be released: everything except a tail that is a proper prefix of a
  // stop string.
  size_t Releasable(const std::string& text) const;

 private:
  std::vector<std::string> stops_;
  size_t checked_ = 0;
};

struct Job {
  Job(std::string id, uint64_t seq, const Tokenizer& tokenizer, std::vector<std::string> stops)
      : id(std::move(id)), seq(seq), stream(tokenizer), stop(std::move(stops)) {}

  const std::string id;
  const uint64_t seq;
  std::vector<int32_t> prompt;
  v1::AdmitSequence admit;  // what the worker gets (prompt filled in at admission)
  std::string client_tag;
  absl::Time deadline = absl::InfiniteFuture();

  v1::JobState state = v1::JOB_STATE_QUEUED;
  v1::FinishReason reason = v1::FINISH_REASON_UNSPECIFIED;
  grpc::StatusCode error_code = grpc::StatusCode::OK;  // FAILED jobs: what Generate returns
  std::string error;
  bool worker_done = false;  // the worker reported the sequence done (or never had it)

  std::vector<int32_t> tokens;
  std::string text;      // decoded so far (stop string cut off once found)
  size_t released = 0;   // bytes of `text` the client may see
  StreamDecoder stream;
  StopMatcher stop;

  v1::GenerationReport report;
  absl::Time submitted = absl::Now(), admitted, first_token, last_token, ended;

  std::condition_variable changed;  // with the coordinator's mutex

  bool ended_state() const {
    return state == v1::JOB_STATE_FINISHED || state == v1::JOB_STATE_CANCELLED ||
           state == v1::JOB_STATE_FAILED;
  }
  // Appends a generated token. Returns true when a stop string completed (text cut before it).
  bool AddToken(int32_t token, absl::Time now);
  // Ends the job: releases the held-back text (unless a stop string cut it), fills the timing of
  // the report.
  void End(v1::JobState final_state, v1::FinishReason why, absl::Time now);
  void FillTiming(v1::GenerationReport& r) const;
  v1::JobInfo Info(bool with_output) const;
};

}  // namespace resa::serving
