#include "runtime/serving/job.h"

#include <algorithm>

namespace resa::serving {

size_t StopMatcher::Find(const std::string& text) {
  size_t best = std::string::npos;
  for (const std::string& s : stops_) {
    // A match not found before must end in the bytes added since.
    const size_t start = checked_ + 1 > s.size() ? checked_ + 1 - s.size() : 0;
    const size_t pos = text.find(s, start);
    if (pos != std::string::npos) best = std::min(best, pos);
  }
  checked_ = text.size();
  return best;
}

size_t StopMatcher::Releasable(const std::string& text) const {
  size_t hold = 0;
  for (const std::string& s : stops_) {
    for (size_t k = std::min(s.size() - 1, text.size()); k > hold; --k) {
      if (text.compare(text.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
    }
  }
  return text.size() - hold;
}

bool Job::AddToken(int32_t token, absl::Time now) {
  if (tokens.empty()) first_token = now;
  last_token = now;
  tokens.push_back(token);
  text += stream.Push(token);
  const size_t pos = stop.Find(text);
  if (pos != std::string::npos) {
    text.resize(pos);
    released = std::min(released, text.size());
    return true;
  }
  released = stop.Releasable(text);
  return false;
}

void Job::End(v1::JobState final_state, v1::FinishReason why, absl::Time now) {
  if (why != v1::FINISH_REASON_STOP) text += stream.Flush();
  released = text.size();
  state = final_state;
  reason = why;
  ended = now;
  changed.notify_all();
}

void Job::FillTiming(v1::GenerationReport& r) const {
  const absl::Time end = ended_state() ? ended : absl::Now();
  r.set_generated_tokens(int32_t(tokens.size()));
  if (admitted != absl::Time()) r.set_queue_seconds(absl::ToDoubleSeconds(admitted - submitted));
  if (!tokens.empty()) {
    r.set_time_to_first_token_seconds(absl::ToDoubleSeconds(first_token - submitted));
  }
  if (tokens.size() > 1) {
    r.set_time_per_token_seconds(absl::ToDoubleSeconds(last_token - first_token) /
                                 double(tokens.size() - 1));
  }
  r.set_total_seconds(absl::ToDoubleSeconds(end - submitted));
}

v1::JobInfo Job::Info(bool with_output) const {
  v1::JobInfo info;
  info.set_job_id(id);
  info.set_state(state);
  info.set_finish_reason(reason);
  info.set_error(error);
  info.set_client_tag(client_tag);
  info.set_submitted_unix_seconds(absl::ToDoubleSeconds(submitted - absl::UnixEpoch()));
  *info.mutable_report() = report;
  info.mutable_report()->set_prompt_tokens(int32_t(prompt.size()));
  FillTiming(*info.mutable_report());
  if (with_output) {
    info.mutable_token_ids()->Add(tokens.begin(), tokens.end());
    info.set_text(text.substr(0, released));
  }
  return info;
}

}  // namespace resa::serving
