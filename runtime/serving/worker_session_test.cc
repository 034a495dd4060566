// WorkerSession driven by BatchScheduler plans, on a small random-weight model: the planned
// rectification schedule reproduces the decoder's own (same tokens, same counters), continuous
// batching equals solo runs, and cancel / length / stop / bad settings end sequences cleanly.
#include "runtime/serving/worker_session.h"

#include <map>

#include "gtest/gtest.h"
#include "runtime/engine/synthetic_model.h"
#include "runtime/serving/request.h"
#include "runtime/serving/scheduler.h"

namespace resa::serving {
namespace {

struct Spec {
  uint64_t seq;
  std::vector<int32_t> prompt;
  int32_t max_tokens;
  ResaOptions resa;
  int admit_at_plan = 0;  // joins the batch before this plan
  bool ignore_eos = false;
};

struct Outcome {
  std::vector<int32_t> tokens;
  v1::SequenceDone done;
};

class WorkerSessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto cfg = SyntheticConfig("tiny");
    ASSERT_TRUE(cfg.ok());
    source_ = MakeSyntheticWeights(*cfg, 11);
    auto w = LoadCpuWeights(*source_);
    ASSERT_TRUE(w.ok()) << w.status();
    weights_ = std::move(*w);
  }
  std::vector<int32_t> Tokens(int n, int salt) const {
    std::vector<int32_t> t(n);
    for (int i = 0; i < n; ++i) t[i] = (i * 97 + salt * 31 + 3) % weights_->config.vocab_size;
    return t;
  }

  // The decoder on its own (automatic schedule), greedy.
  std::vector<int32_t> Reference(const Spec& s, SequenceReport* report) {
    auto cache = std::move(KvCache::Create(weights_->config, 64).value());
    CpuModel model(*weights_, *cache);
    Decoder d(model, *cache);
    auto id = d.Start(s.prompt, s.resa);
    EXPECT_TRUE(id.ok()) << id.status();
    std::vector<int32_t> out;
    const int vocab = weights_->config.vocab_size;
    out.push_back(ArgMax(d.logits(*id), vocab));
    while (int32_t(out.size()) < s.max_tokens) {
      Decoder::Feed f{*id, out.back()};
      EXPECT_TRUE(d.Step({&f, 1}).ok());
      out.push_back(ArgMax(d.logits(*id), vocab));
    }
    *report = d.report(*id);
    return out;
  }

  // The scheduler's plans executed by a session; returns every sequence's tokens and end.
  std::map<uint64_t, Outcome> Serve(const std::vector<Spec>& specs, SchedulerOptions so = {},
                                    std::vector<int32_t> stop_ids = {},
                                    std::map<int, uint64_t> cancel_at = {}) {
    auto cache = std::move(KvCache::Create(weights_->config, 64).value());
    CpuModel model(*weights_, *cache);
    CpuBackend backend(model, *cache);
    WorkerSession session(backend, stop_ids, 1024, nullptr);
    BatchScheduler sched(so);
    sched.SetCapacity({.kv_pages = 64, .max_context = 1024, .max_batch = 8});
    std::map<uint64_t, Outcome> out;
    std::map<uint64_t, const Spec*> by_seq;
    for (int plan_no = 0; plan_no < 200; ++plan_no) {
      for (const Spec& s : specs) {
        if (s.admit_at_plan != plan_no) continue;
        const int32_t f = s.resa.mode == DecodeMode::kResa ? s.resa.rectify_every : 0;
        EXPECT_TRUE(sched.Enqueue({s.seq, int32_t(s.prompt.size()), s.max_tokens, f}).ok());
        by_seq[s.seq] = &s;
      }
      if (auto it = cancel_at.find(plan_no); it != cancel_at.end()) sched.Cancel(it->second);
      PlanDraft draft = sched.NextPlan();
      if (draft.empty()) {
        bool later = false;
        for (const Spec& s : specs) later |= s.admit_at_plan > plan_no;
        if (!later) break;
        continue;
      }
      v1::Plan plan;
      plan.set_plan_id(uint64_t(plan_no));
      plan.mutable_cancel()->Add(draft.cancel.begin(), draft.cancel.end());
      for (uint64_t seq : draft.admit) {
        const Spec& s = *by_seq.at(seq);
        v1::AdmitSequence* a = plan.add_admit();
        a->set_seq(seq);
        a->mutable_prompt()->Add(s.prompt.begin(), s.prompt.end());
        a->set_max_tokens(s.max_tokens);
        a->set_ignore_eos(s.ignore_eos);
        a->mutable_sampling()->set_top_p(1.0f);
        *a->mutable_resa() = ToSettings(s.resa);
      }
      for (const auto& after : draft.rectify) {
        plan.add_steps()->mutable_rectify()->Add(after.begin(), after.end());
      }
      bool plan_done = false;
      absl::Status st = session.Execute(plan, [&](v1::WorkerEvent ev) {
        if (ev.has_step_tokens()) {
          for (const auto& t : ev.step_tokens().seqs()) {
            out[t.seq()].tokens.insert(out[t.seq()].tokens.end(), t.tokens().begin(),
                                       t.tokens().end());
          }
        } else if (ev.has_done()) {
          out[ev.done().seq()].done = ev.done();
          sched.Finished(ev.done().seq());
        } else if (ev.has_plan_done()) {
          plan_done = true;
        }
      });
      EXPECT_TRUE(st.ok()) << st;
      EXPECT_TRUE(plan_done);
    }
    EXPECT_EQ(session.running(), 0);
    EXPECT_EQ(session.pages_used(), 0);
    return out;
  }

  std::unique_ptr<WeightSource> source_;
  std::unique_ptr<CpuWeights> weights_;
};

TEST_F(WorkerSessionTest, PlannedRectificationEqualsTheDecodersOwnSchedule) {
  // 19 tokens: 18 steps, rectified after steps 4, 8, 12 and 16 (a rectification due after the
  // very last step is moot: the session ends the sequence first).
  const Spec s{1, Tokens(100, 1), 19, ResaOptions{DecodeMode::kResa, 0.25f, 2, 4}};
  SequenceReport ref_report;
  const std::vector<int32_t> ref = Reference(s, &ref_report);
  ASSERT_GT(ref_report.sparse_steps, 0) << "the test needs sparse steps";
  ASSERT_EQ(ref_report.rectifications, 4);
  auto out = Serve({s});
  EXPECT_EQ(out[1].tokens, ref);
  EXPECT_EQ(out[1].done.reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(out[1].done.report().rectifications(), ref_report.rectifications);
  EXPECT_EQ(out[1].done.report().rectified_tokens(), ref_report.rectified_tokens);
  EXPECT_EQ(out[1].done.report().blocks_read(), ref_report.blocks_read);
  EXPECT_EQ(out[1].done.report().generated_tokens(), 19);
}

TEST_F(WorkerSessionTest, ContinuousBatchingEqualsSoloRuns) {
  const std::vector<Spec> specs = {
      {1, Tokens(70, 2), 18, ResaOptions{DecodeMode::kResa, 0.25f, 2, 4}, 0},
      {2, Tokens(40, 3), 12, ResaOptions{DecodeMode::kSparse, 0.25f, 1, 32}, 3},
      {3, Tokens(33, 4), 9, ResaOptions{DecodeMode::kDense, 0.1f, 16, 32}, 5},
      {4, Tokens(90, 5), 15, ResaOptions{DecodeMode::kResa, 0.3f, 2, 5}, 6},
  };
  auto together = Serve(specs);
  for (const Spec& s : specs) {
    SequenceReport rep;
    EXPECT_EQ(together[s.seq].tokens, Reference(s, &rep)) << "sequence " << s.seq;
    EXPECT_EQ(together[s.seq].done.report().rectifications(), rep.rectifications);
  }
}

TEST_F(WorkerSessionTest, StaggeredRectificationsStillRewriteEveryToken) {
  std::vector<Spec> specs;
  for (uint64_t i = 1; i <= 4; ++i) {
    specs.push_back({i, Tokens(64 + 8 * int(i), int(i)), 17,
                     ResaOptions{DecodeMode::kResa, 0.25f, 2, 4}});
  }
  auto out = Serve(specs, SchedulerOptions{.rectify_budget = 8});
  for (const Spec& s : specs) {
    const v1::GenerationReport& r = out[s.seq].done.report();
    EXPECT_EQ(out[s.seq].tokens.size(), 17u);
    EXPECT_GE(r.rectifications(), 3) << "sequence " << s.seq;
    // Windows grow when deferred; no token is rectified twice, none is left out beyond the tail.
    EXPECT_LE(r.rectified_tokens(), r.decode_steps());
    EXPECT_GE(r.rectified_tokens(), r.decode_steps() - 6);
  }
}

TEST_F(WorkerSessionTest, CancelStopTokensAndBadSettingsEndSequences) {
  const std::vector<Spec> specs = {
      {1, Tokens(30, 1), 50, ResaOptions{DecodeMode::kDense, 0.1f, 16, 32}, 0, true},
      {2, Tokens(30, 2), 50, ResaOptions{DecodeMode::kDense, 0.1f, 16, 32}, 0},
      {3, Tokens(30, 3), 50, ResaOptions{DecodeMode::kResa, 0.1f, 16, 0}, 0},  // f = 0: invalid
  };
  SequenceReport rep;
  const std::vector<int32_t> ref2 = Reference(specs[1], &rep);
  // Sequence 2 stops on its 5th greedy token; sequence 1 is cancelled before plan 4.
  auto out = Serve(specs, {}, {ref2[4]}, {{4, 1}});
  EXPECT_EQ(out[1].done.reason(), v1::FINISH_REASON_CANCELLED);
  EXPECT_EQ(out[1].tokens.size(), 5u);  // plan 0: admission + 1 step; plans 1-3: 1 step each
  EXPECT_EQ(out[2].done.reason(), v1::FINISH_REASON_EOS);
  EXPECT_EQ(out[2].tokens.size(), size_t(std::find(ref2.begin(), ref2.end(), ref2[4]) -
                                         ref2.begin() + 1));
  EXPECT_EQ(out[3].done.reason(), v1::FINISH_REASON_ERROR);
  EXPECT_NE(out[3].done.error().find("rectify-every"), std::string::npos) << out[3].done.error();
  EXPECT_TRUE(out[3].tokens.empty());
}

}  // namespace
}  // namespace resa::serving
