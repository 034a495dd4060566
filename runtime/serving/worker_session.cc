#include "runtime/serving/worker_session.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "runtime/core/status.h"

namespace resa::serving {

namespace {

ResaOptions ToResaOptions(const v1::ResaSettings& r) {
  ResaOptions o;
  switch (r.mode()) {
    case v1::DECODE_MODE_DENSE:
      o.mode = DecodeMode::kDense;
      break;
    case v1::DECODE_MODE_SPARSE:
      o.mode = DecodeMode::kSparse;
      break;
    default:
      o.mode = DecodeMode::kResa;
      break;
  }
  if (r.has_sparse_ratio()) o.sparse_ratio = r.sparse_ratio();
  if (r.has_min_blocks()) o.min_blocks = r.min_blocks();
  if (r.has_rectify_every()) o.rectify_every = r.rectify_every();
  return o;
}

SamplingParams ToSampling(const v1::SamplingSettings& s) {
  SamplingParams p;
  p.temperature = s.temperature();
  p.top_k = s.top_k();
  p.top_p = s.has_top_p() ? s.top_p() : 1.0f;
  p.seed = s.seed();
  return p;
}

// Errors that are the same on every rank and concern one sequence only.
bool IsSequenceError(const absl::Status& st) {
  return st.code() == absl::StatusCode::kInvalidArgument ||
         st.code() == absl::StatusCode::kResourceExhausted;
}

}  // namespace

WorkerSession::WorkerSession(ModelBackend& backend, std::vector<int32_t> stop_ids,
                             int32_t max_context, Communicator* agree)
    : backend_(backend),
      decoder_(backend),
      stop_ids_(std::move(stop_ids)),
      max_context_(max_context),
      agree_(agree) {
  decoder_.set_schedule(Decoder::Schedule::kExternal);
  // Decode steps sample where the logits are (on a GPU only the token ids come back).
  decoder_.set_host_logits(false);
}

int64_t WorkerSession::pages_used() const {
  return backend_.num_pages() - backend_.free_pages();
}

absl::Status WorkerSession::SampleAndShare(const std::vector<uint64_t>& order, bool after_step,
                                           std::vector<int32_t>& tokens) {
  tokens.assign(order.size(), 0);
  const bool root = agree_ == nullptr || agree_->rank() == 0;
  if (root && after_step && !order.empty()) {
    // Row i of the step's forward is order[i]'s; one launch samples the batch.
    std::vector<RowSampling> rows(order.size());
    for (size_t i = 0; i < order.size(); ++i) rows[i] = seqs_.at(order[i]).sampler->Next(int32_t(i));
    RESA_RETURN_IF_ERROR(backend_.Sample(rows, tokens.data()));
  } else if (root) {
    // After admissions: each prefill's last logits are on the host (one forward per prompt).
    const int vocab = backend_.config().vocab_size;
    for (size_t i = 0; i < order.size(); ++i) {
      Seq& s = seqs_.at(order[i]);
      tokens[i] = s.sampler->Sample(decoder_.logits(s.id), vocab);
    }
  }
  if (agree_ != nullptr && agree_->size() > 1 && !tokens.empty()) {
    RESA_RETURN_IF_ERROR(agree_->Broadcast(std::span<int32_t>(tokens), 0));
  }
  return absl::OkStatus();
}

v1::FinishReason WorkerSession::StopReason(const Seq& s, int32_t token) const {
  if (!s.ignore_eos && std::find(stop_ids_.begin(), stop_ids_.end(), token) != stop_ids_.end()) {
    return v1::FINISH_REASON_EOS;
  }
  if (s.generated >= s.max_tokens) return v1::FINISH_REASON_LENGTH;
  // The next step would append this token at position length: it must fit the context.
  if (decoder_.kv(s.id).length >= max_context_) return v1::FINISH_REASON_CONTEXT;
  return v1::FINISH_REASON_UNSPECIFIED;
}

void WorkerSession::Finish(uint64_t seq, v1::FinishReason reason, const std::string& error,
                           const std::function<void(v1::WorkerEvent)>& emit) {
  auto it = seqs_.find(seq);
  v1::WorkerEvent ev;
  v1::SequenceDone* done = ev.mutable_done();
  done->set_seq(seq);
  done->set_reason(reason);
  done->set_error(error);
  if (it != seqs_.end()) {
    if (it->second.id >= 0) {
      const SequenceReport& r = decoder_.report(it->second.id);
      v1::GenerationReport* rep = done->mutable_report();
      rep->set_prompt_tokens(r.prompt_tokens);
      rep->set_generated_tokens(it->second.generated);
      rep->set_decode_steps(r.decode_steps);
      rep->set_sparse_steps(r.sparse_steps);
      rep->set_blocks_read(r.blocks_read);
      rep->set_blocks_total(r.blocks_total);
      rep->set_rectifications(r.rectifications);
      rep->set_rectified_tokens(r.rectified_tokens);
      decoder_.Finish(it->second.id);
    }
    seqs_.erase(it);
  }
  if (agree_ == nullptr || agree_->rank() == 0) emit(std::move(ev));
}

absl::Status WorkerSession::Execute(const v1::Plan& plan,
                                    const std::function<void(v1::WorkerEvent)>& emit) {
  const bool root = agree_ == nullptr || agree_->rank() == 0;
  const double prefill0 = decoder_.prefill_seconds(), step0 = decoder_.step_seconds(),
               rectify0 = decoder_.rectify_seconds();
  auto send_tokens = [&](const std::vector<uint64_t>& order, const std::vector<int32_t>& tokens) {
    if (!root || order.empty()) return;
    v1::WorkerEvent ev;
    v1::StepTokens* st = ev.mutable_step_tokens();
    st->set_plan_id(plan.plan_id());
    for (size_t i = 0; i < order.size(); ++i) {
      v1::SequenceTokens* t = st->add_seqs();
      t->set_seq(order[i]);
      t->add_tokens(tokens[i]);
    }
    emit(std::move(ev));
  };
  // Records each sampled token and finishes the sequences that stop on it.
  auto record = [&](const std::vector<uint64_t>& order, const std::vector<int32_t>& tokens) {
    send_tokens(order, tokens);
    for (size_t i = 0; i < order.size(); ++i) {
      Seq& s = seqs_.at(order[i]);
      s.generated++;
      s.last = tokens[i];
      const v1::FinishReason why = StopReason(s, tokens[i]);
      if (why != v1::FINISH_REASON_UNSPECIFIED) Finish(order[i], why, "", emit);
    }
  };

  for (uint64_t seq : plan.cancel()) {
    if (seqs_.count(seq)) Finish(seq, v1::FINISH_REASON_CANCELLED, "", emit);
  }

  std::vector<uint64_t> admitted;
  for (const v1::AdmitSequence& a : plan.admit()) {
    if (seqs_.count(a.seq())) {
      return absl::InternalError(absl::StrCat("sequence ", a.seq(), " admitted twice"));
    }
    Seq& s = seqs_[a.seq()];
    s.max_tokens = a.max_tokens();
    s.ignore_eos = a.ignore_eos();
    const SamplingParams sampling = ToSampling(a.sampling());
    const ResaOptions resa = ToResaOptions(a.resa());
    absl::Status st = sampling.Validate();
    if (st.ok()) st = resa.Validate();
    if (st.ok() && a.prompt().empty()) st = absl::InvalidArgumentError("the prompt is empty");
    if (st.ok() && a.max_tokens() < 1) {
      st = absl::InvalidArgumentError(absl::StrCat("max_tokens must be >= 1, got ", a.max_tokens()));
    }
    if (st.ok() && int64_t(a.prompt_size()) + a.max_tokens() > max_context_) {
      st = absl::InvalidArgumentError(absl::StrCat("prompt + max_tokens exceed the context of ",
                                                   max_context_, " tokens"));
    }
    if (st.ok()) {
      const std::vector<int32_t> prompt(a.prompt().begin(), a.prompt().end());
      auto id = decoder_.Start(prompt, resa);
      st = id.status();
      if (st.ok()) s.id = *id;
    }
    if (!st.ok()) {
      if (!IsSequenceError(st)) return st;
      Finish(a.seq(), v1::FINISH_REASON_ERROR, std::string(st.message()), emit);
      continue;
    }
    s.sampler = std::make_unique<Sampler>(sampling);
    admitted.push_back(a.seq());
  }
  std::vector<int32_t> tokens;
  RESA_RETURN_IF_ERROR(SampleAndShare(admitted, /*after_step=*/false, tokens));
  record(admitted, tokens);

  int32_t steps = 0;
  for (const v1::PlanStep& step : plan.steps()) {
    if (seqs_.empty()) break;
    std::vector<uint64_t> order;
    std::vector<Decoder::Feed> feeds;
    for (const auto& [seq, s] : seqs_) {
      order.push_back(seq);
      feeds.push_back({s.id, s.last});
    }
    RESA_RETURN_IF_ERROR(decoder_.Step(feeds));
    ++steps;
    RESA_RETURN_IF_ERROR(SampleAndShare(order, /*after_step=*/true, tokens));
    record(order, tokens);
    std::vector<int> rectify;
    for (uint64_t seq : step.rectify()) {
      auto it = seqs_.find(seq);
      if (it != seqs_.end()) rectify.push_back(it->second.id);
    }
    RESA_RETURN_IF_ERROR(decoder_.Rectify(rectify));
  }

  if (root) {
    v1::WorkerEvent ev;
    v1::PlanDone* done = ev.mutable_plan_done();
    done->set_plan_id(plan.plan_id());
    done->set_prefill_seconds(decoder_.prefill_seconds() - prefill0);
    done->set_step_seconds(decoder_.step_seconds() - step0);
    done->set_rectify_seconds(decoder_.rectify_seconds() - rectify0);
    done->set_steps(steps);
    done->set_kv_pages_used(pages_used());
    emit(std::move(ev));
  }
  return absl::OkStatus();
}

}  // namespace resa::serving
