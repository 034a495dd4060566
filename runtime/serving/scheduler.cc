#include "runtime/serving/scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace resa::serving {

namespace {
constexpr int64_t kPageTokens = 16;
}

int64_t Capacity::PagesFor(int64_t tokens) const {
  const int64_t blocks = (tokens + kPageTokens - 1) / kPageTokens;
  const int64_t s = std::max<int64_t>(1, sp);
  return (blocks + s - 1) / s;
}

absl::Status SchedulerOptions::Validate() const {
  if (max_queue < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--max-queue must be >= 1, got ", max_queue));
  }
  if (max_queue_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-queue-tokens must be >= 0 (0: no bound), got ", max_queue_tokens));
  }
  if (plan_steps < 1 || plan_steps > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("--plan-steps must be in [1, 1024], got ", plan_steps));
  }
  if (rectify_budget < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--rectify-budget must be >= 0 (0: no bound), got ", rectify_budget));
  }
  return absl::OkStatus();
}

absl::Status BatchScheduler::Enqueue(const SeqRequest& r) {
  const int64_t tokens = Tokens(r);
  if (tokens > capacity_.max_context) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt (", r.prompt_tokens, " tokens) + max_tokens (", r.max_tokens,
        ") exceed the worker's context of ", capacity_.max_context, " tokens"));
  }
  if (capacity_.PagesFor(tokens) > capacity_.kv_pages) {
    return absl::InvalidArgumentError(
        absl::StrCat("the request needs ", capacity_.PagesFor(tokens),
                     " KV pages per rank, the worker has ", capacity_.kv_pages));
  }
  if (int32_t(queue_.size()) >= options_.max_queue) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the queue is full: ", queue_.size(), " requests waiting (--max-queue ",
        options_.max_queue, "); retry later"));
  }
  if (options_.max_queue_tokens > 0 && !queue_.empty() &&
      queued_tokens_ + tokens > options_.max_queue_tokens) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the queue is full: ", queued_tokens_, " tokens waiting + ", tokens,
        " would exceed --max-queue-tokens ", options_.max_queue_tokens, "; retry later"));
  }
  queue_.push_back(r);
  queued_tokens_ += tokens;
  return absl::OkStatus();
}

bool BatchScheduler::Cancel(uint64_t seq) {
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (it->seq == seq) {
      queued_tokens_ -= Tokens(*it);
      queue_.erase(it);
      return true;
    }
  }
  auto it = running_.find(seq);
  if (it != running_.end() && !it->second.cancelling) {
    it->second.cancelling = true;
    to_cancel_.push_back(seq);
  }
  return false;
}

void BatchScheduler::Finished(uint64_t seq) {
  auto it = running_.find(seq);
  if (it == running_.end()) return;
  pages_reserved_ -= it->second.pages;
  running_.erase(it);
  std::erase(to_cancel_, seq);
}

PlanDraft BatchScheduler::NextPlan() {
  PlanDraft plan;
  plan.cancel.swap(to_cancel_);
  int32_t active = 0;
  for (const auto& [seq, r] : running_) active += r.cancelling ? 0 : 1;
  // Slots: cancelled sequences leave before the admissions of the same plan run.
  while (!queue_.empty()) {
    const SeqRequest& r = queue_.front();
    const int64_t pages = capacity_.PagesFor(Tokens(r));
    if (int32_t(running_.size()) - int32_t(plan.cancel.size()) >= capacity_.max_batch) break;
    if (pages_reserved_ + pages > capacity_.kv_pages) break;
    running_[r.seq] = Running{pages, r.rectify_every, 0, false};
    pages_reserved_ += pages;
    queued_tokens_ -= Tokens(r);
    plan.admit.push_back(r.seq);
    queue_.pop_front();
    ++active;
  }
  if (active == 0) return plan;

  plan.rectify.resize(size_t(options_.plan_steps));
  for (auto& after_step : plan.rectify) {
    std::vector<std::pair<int32_t, uint64_t>> due;  // (unrectified, seq)
    for (auto& [seq, r] : running_) {
      if (r.cancelling) continue;
      ++r.unrectified;
      if (r.rectify_every > 0 && r.unrectified >= r.rectify_every) due.push_back({r.unrectified, seq});
    }
    // Most overdue first, then the oldest sequence (lower id).
    std::sort(due.begin(), due.end(),
              [](const auto& a, const auto& b) { return a.first != b.first ? a.first > b.first
                                                                           : a.second < b.second; });
    int64_t tokens = 0;
    for (const auto& [window, seq] : due) {
      if (options_.rectify_budget > 0 && !after_step.empty() &&
          tokens + window > options_.rectify_budget) {
        break;  // the rest wait a step
      }
      tokens += window;
      plan.rectify_tokens += window;
      after_step.push_back(seq);
      running_[seq].unrectified = 0;
    }
    std::sort(after_step.begin(), after_step.end());
  }
  return plan;
}

std::vector<uint64_t> BatchScheduler::Reset() {
  std::vector<uint64_t> ids;
  for (const auto& [seq, r] : running_) ids.push_back(seq);
  for (const SeqRequest& r : queue_) ids.push_back(r.seq);
  running_.clear();
  queue_.clear();
  to_cancel_.clear();
  queued_tokens_ = 0;
  pages_reserved_ = 0;
  return ids;
}

int32_t BatchScheduler::QueuePosition(uint64_t seq) const {
  for (size_t i = 0; i < queue_.size(); ++i) {
    if (queue_[i].seq == seq) return int32_t(i);
  }
  return -1;
}

}  // namespace resa::serving
