// Planning for the coordinator (DESIGN.md §6): which queued sequences a worker group admits (KV
// pages and batch slots), and after which decode step each running ReSA sequence rectifies.
// Plain C++, no gRPC and no model, so the policy is testable on its own.
//
// Continuous batching: every plan first cancels, then admits (prefill; the first token comes from
// the prefill's logits), then runs `plan_steps` decode steps that feed every running sequence one
// token. Sequences join and leave between plans.
//
// Rectification (resa-spec §3; the paper's "fixed rectification frequency per request, scheduled
// like a chunked-prefill piece"): a ReSA sequence is due once f tokens were fed since its last
// rectification. All sequences due after a step rectify together in one dense pass. With a
// per-step token budget the scheduler staggers them: the most overdue go first, the rest wait a
// step (their window grows past f; the worker re-runs all unrectified tokens), so one step does
// not carry every sequence's rectification when many were admitted together.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <vector>

#include "absl/status/status.h"

namespace resa::serving {

// What a registered worker group can hold.
struct Capacity {
  int64_t kv_pages = 0;     // pages per rank (every rank of a group has the same pool)
  int32_t max_context = 0;  // tokens per sequence: prompt + generated
  int32_t max_batch = 0;    // sequences per step
  int32_t sp = 1;           // SP ranks: a sequence's blocks are spread over them

  // Pages per rank a sequence of `tokens` positions needs (16-token blocks, block b on SP rank
  // b % sp: every rank reserves ceil(blocks / sp)).
  int64_t PagesFor(int64_t tokens) const;
};

struct SchedulerOptions {
  int32_t max_queue = 256;         // requests waiting for admission
  int64_t max_queue_tokens = 0;    // prompt + max tokens of the waiting requests; 0: no bound
  int32_t plan_steps = 1;          // decode steps per plan
  int32_t rectify_budget = 0;      // rectified tokens per step; 0: every due sequence at once

  absl::Status Validate() const;
};

struct SeqRequest {
  uint64_t seq = 0;
  int32_t prompt_tokens = 0;
  int32_t max_tokens = 0;
  int32_t rectify_every = 0;  // f for ReSA sequences; 0: never rectified (dense, sparse)
};

struct PlanDraft {
  std::vector<uint64_t> cancel;
  std::vector<uint64_t> admit;
  std::vector<std::vector<uint64_t>> rectify;  // per step: sequences rectified after it
  int64_t rectify_tokens = 0;                   // their windows, summed
  bool empty() const { return cancel.empty() && admit.empty() && rectify.empty(); }
};

class BatchScheduler {
 public:
  explicit BatchScheduler(const SchedulerOptions& options) : options_(options) {}

  // A new worker group: capacity changes; nothing may be running (call Reset first).
  void SetCapacity(const Capacity& capacity) { capacity_ = capacity; }
  const Capacity& capacity() const { return capacity_; }

  // Queues a sequence. InvalidArgument when it can never fit the worker (context, pages);
  // ResourceExhausted when the queue is full (by requests or tokens), naming the bound.
  absl::Status Enqueue(const SeqRequest& request);

  // A queued sequence leaves the queue (returns true); a running one is cancelled in the next
  // plan and keeps its pages until the worker reports it done. Unknown ids: false.
  bool Cancel(uint64_t seq);

  // The worker reported the sequence done (any reason): its pages and slot are free.
  void Finished(uint64_t seq);

  // The next plan: cancels, admissions (in queue order while pages and slots last; a request
  // that does not fit blocks those behind it, so large requests are not starved), then
  // plan_steps steps when anything runs. Empty when there is nothing to do.
  PlanDraft NextPlan();

  // Forgets every sequence (the worker group was lost); returns the ids that were running or
  // queued, queued ones last.
  std::vector<uint64_t> Reset();

  int32_t queued() const { return int32_t(queue_.size()); }
  int64_t queued_tokens() const { return queued_tokens_; }
  int32_t running() const { return int32_t(running_.size()); }
  int64_t pages_reserved() const { return pages_reserved_; }
  // 0-based position in the queue, or -1.
  int32_t QueuePosition(uint64_t seq) const;

 private:
  struct Running {
    int64_t pages = 0;
    int32_t rectify_every = 0;
    int32_t unrectified = 0;   // tokens fed since the last rectification (mirrors the worker)
    bool cancelling = false;   // cancel sent: no longer fed
  };
  static int64_t Tokens(const SeqRequest& r) { return int64_t(r.prompt_tokens) + r.max_tokens; }

  SchedulerOptions options_;
  Capacity capacity_;
  std::deque<SeqRequest> queue_;
  int64_t queued_tokens_ = 0;
  std::map<uint64_t, Running> running_;
  std::vector<uint64_t> to_cancel_;
  int64_t pages_reserved_ = 0;
};

}  // namespace resa::serving
