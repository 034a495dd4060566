// BatchScheduler: admission against KV pages and batch slots, queue bounds, the rectification
// schedule (every f fed tokens; staggered under a budget), cancellation.
#include "runtime/serving/scheduler.h"

#include <algorithm>
#include <map>

#include "gtest/gtest.h"

namespace resa::serving {
namespace {

BatchScheduler Make(Capacity c, SchedulerOptions o = {}) {
  BatchScheduler s(o);
  s.SetCapacity(c);
  return s;
}

TEST(SchedulerTest, PagesPerRankSpreadBlocksOverSp) {
  EXPECT_EQ(Capacity{.sp = 1}.PagesFor(1), 1);
  EXPECT_EQ(Capacity{.sp = 1}.PagesFor(16), 1);
  EXPECT_EQ(Capacity{.sp = 1}.PagesFor(17), 2);
  EXPECT_EQ(Capacity{.sp = 2}.PagesFor(17), 1);
  EXPECT_EQ(Capacity{.sp = 2}.PagesFor(48), 2);  // 3 blocks: rank 0 holds 2
  EXPECT_EQ(Capacity{.sp = 4}.PagesFor(16 * 9), 3);
}

TEST(SchedulerTest, AdmitsInOrderWhileSlotsLast) {
  auto s = Make({.kv_pages = 100, .max_context = 64, .max_batch = 2});
  for (uint64_t id = 1; id <= 3; ++id) ASSERT_TRUE(s.Enqueue({id, 10, 6}).ok());
  PlanDraft p = s.NextPlan();
  EXPECT_EQ(p.admit, (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(p.rectify.size(), 1u);
  EXPECT_EQ(s.QueuePosition(3), 0);
  EXPECT_TRUE(s.NextPlan().admit.empty());
  s.Finished(1);
  EXPECT_EQ(s.NextPlan().admit, (std::vector<uint64_t>{3}));
  EXPECT_EQ(s.running(), 2);
}

TEST(SchedulerTest, AdmitsAgainstPagesAndALargeRequestIsNotOvertaken) {
  // 4 + 8 pages do not fit 10: the 8-page request waits and the 1-page one waits behind it.
  auto s = Make({.kv_pages = 10, .max_context = 1000, .max_batch = 8});
  ASSERT_TRUE(s.Enqueue({1, 60, 4}).ok());   // 64 tokens: 4 pages
  ASSERT_TRUE(s.Enqueue({2, 120, 8}).ok());  // 128 tokens: 8 pages
  ASSERT_TRUE(s.Enqueue({3, 8, 8}).ok());    // 1 page
  EXPECT_EQ(s.NextPlan().admit, (std::vector<uint64_t>{1}));
  EXPECT_EQ(s.pages_reserved(), 4);
  EXPECT_TRUE(s.NextPlan().admit.empty());
  s.Finished(1);
  EXPECT_EQ(s.NextPlan().admit, (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(s.pages_reserved(), 9);
}

TEST(SchedulerTest, EnqueueRefusesWhatCanNeverFitAndBoundsTheQueue) {
  auto s = Make({.kv_pages = 40, .max_context = 100, .max_batch = 1},
                {.max_queue = 2, .max_queue_tokens = 150});
  absl::Status st = s.Enqueue({1, 90, 20});
  EXPECT_TRUE(absl::IsInvalidArgument(st)) << st;
  EXPECT_NE(st.message().find("context of 100"), absl::string_view::npos) << st;
  st = Make({.kv_pages = 4, .max_context = 1000, .max_batch = 1}).Enqueue({1, 90, 20});
  EXPECT_TRUE(absl::IsInvalidArgument(st)) << st;  // 7 pages > 4
  ASSERT_TRUE(s.Enqueue({1, 50, 20}).ok());
  st = s.Enqueue({2, 60, 30});  // 70 + 90 tokens > 150
  EXPECT_TRUE(absl::IsResourceExhausted(st)) << st;
  EXPECT_NE(st.message().find("--max-queue-tokens"), absl::string_view::npos) << st;
  ASSERT_TRUE(s.Enqueue({3, 10, 10}).ok());
  st = s.Enqueue({4, 1, 1});
  EXPECT_TRUE(absl::IsResourceExhausted(st)) << st;
  EXPECT_NE(st.message().find("--max-queue 2"), absl::string_view::npos) << st;
  EXPECT_EQ(s.queued(), 2);
  EXPECT_EQ(s.queued_tokens(), 90);
}

// Runs `plans` plans and returns, per sequence, the steps (1-based, counted from its admission)
// after which it rectified, and each rectification's window.
std::map<uint64_t, std::vector<std::pair<int, int>>> Rectifications(BatchScheduler& s, int plans) {
  std::map<uint64_t, int> fed, window;
  std::map<uint64_t, std::vector<std::pair<int, int>>> out;
  for (int i = 0; i < plans; ++i) {
    PlanDraft p = s.NextPlan();
    for (uint64_t a : p.admit) fed[a] = 0, window[a] = 0;
    for (const auto& after : p.rectify) {
      for (auto& [seq, n] : fed) ++n, ++window[seq];
      for (uint64_t seq : after) {
        out[seq].push_back({fed[seq], window[seq]});
        window[seq] = 0;
      }
    }
  }
  return out;
}

TEST(SchedulerTest, ResaSequencesRectifyEveryFTokensTogether) {
  auto s = Make({.kv_pages = 100, .max_context = 1000, .max_batch = 4});
  ASSERT_TRUE(s.Enqueue({1, 10, 100, 4}).ok());
  ASSERT_TRUE(s.Enqueue({2, 10, 100, 4}).ok());
  ASSERT_TRUE(s.Enqueue({3, 10, 100, 0}).ok());  // dense or sparse: never
  auto r = Rectifications(s, 12);
  const std::vector<std::pair<int, int>> every4 = {{4, 4}, {8, 4}, {12, 4}};
  EXPECT_EQ(r[1], every4);
  EXPECT_EQ(r[2], every4);
  EXPECT_TRUE(r[3].empty());
}

TEST(SchedulerTest, PlansOfSeveralStepsKeepTheSchedule) {
  auto s = Make({.kv_pages = 100, .max_context = 1000, .max_batch = 4}, {.plan_steps = 3});
  ASSERT_TRUE(s.Enqueue({1, 10, 100, 5}).ok());
  auto r = Rectifications(s, 4);  // 12 steps
  EXPECT_EQ(r[1], (std::vector<std::pair<int, int>>{{5, 5}, {10, 5}}));
}

TEST(SchedulerTest, BudgetStaggersRectificationsMostOverdueFirst) {
  auto s = Make({.kv_pages = 100, .max_context = 1000, .max_batch = 4}, {.rectify_budget = 8});
  for (uint64_t id = 1; id <= 4; ++id) ASSERT_TRUE(s.Enqueue({id, 10, 100, 4}).ok());
  std::map<int, int64_t> tokens_at_step;
  std::map<uint64_t, int> rectified;
  for (int step = 1; step <= 7; ++step) {
    PlanDraft p = s.NextPlan();
    tokens_at_step[step] = p.rectify_tokens;
    for (uint64_t seq : p.rectify[0]) rectified[seq]++;
  }
  // Step 4: two windows of 4 fill the budget; the others go at steps 5 and 6 (windows 5, 6).
  EXPECT_EQ(tokens_at_step[4], 8);
  EXPECT_EQ(tokens_at_step[5], 5);
  EXPECT_EQ(tokens_at_step[6], 6);
  for (uint64_t id = 1; id <= 4; ++id) EXPECT_EQ(rectified[id], 1) << "sequence " << id;
  // Every step stays within the budget (a single window may exceed it, never two).
  for (const auto& [step, t] : tokens_at_step) EXPECT_LE(t, 8) << "step " << step;
}

TEST(SchedulerTest, CancelQueuedAndRunning) {
  auto s = Make({.kv_pages = 100, .max_context = 1000, .max_batch = 1});
  ASSERT_TRUE(s.Enqueue({1, 10, 10, 4}).ok());
  ASSERT_TRUE(s.Enqueue({2, 10, 10, 4}).ok());
  EXPECT_EQ(s.NextPlan().admit, (std::vector<uint64_t>{1}));
  EXPECT_TRUE(s.Cancel(2));   // was queued
  EXPECT_FALSE(s.Cancel(1));  // running: cancelled in the next plan
  EXPECT_FALSE(s.Cancel(99));
  PlanDraft p = s.NextPlan();
  EXPECT_EQ(p.cancel, (std::vector<uint64_t>{1}));
  EXPECT_TRUE(p.rectify.empty());  // nothing else runs
  EXPECT_TRUE(s.NextPlan().empty());
  s.Finished(1);
  EXPECT_EQ(s.running(), 0);
  EXPECT_EQ(s.pages_reserved(), 0);
}

TEST(SchedulerTest, ResetForgetsEverything) {
  auto s = Make({.kv_pages = 100, .max_context = 1000, .max_batch = 1});
  ASSERT_TRUE(s.Enqueue({1, 10, 10}).ok());
  ASSERT_TRUE(s.Enqueue({2, 10, 10}).ok());
  s.NextPlan();
  std::vector<uint64_t> ids = s.Reset();
  EXPECT_EQ(ids, (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(s.running() + s.queued(), 0);
  EXPECT_TRUE(s.NextPlan().empty());
}

TEST(SchedulerTest, OptionsValidateNameTheFlag) {
  EXPECT_NE(SchedulerOptions{.max_queue = 0}.Validate().message().find("--max-queue"),
            absl::string_view::npos);
  EXPECT_NE(SchedulerOptions{.plan_steps = 0}.Validate().message().find("--plan-steps"),
            absl::string_view::npos);
  EXPECT_TRUE(SchedulerOptions{}.Validate().ok());
}

}  // namespace
}  // namespace resa::serving
