// MakeCpuGenerator: continuous batching of math prompts over one Decoder.
#include <algorithm>
#include <deque>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/core/status.h"
#include "runtime/core/sysinfo.h"
#include "runtime/engine/cpu_model.h"
#include "runtime/engine/kv_cache.h"
#include "runtime/eval/math_generator.h"

namespace resa {

namespace {

class CpuGenerator final : public MathGenerator {
 public:
  CpuGenerator(const CpuWeights& weights, const Tokenizer& tokenizer,
               const CpuGeneratorOptions& options)
      : weights_(weights), tok_(tokenizer), opt_(options) {}

  std::string Describe() const override {
    return absl::StrCat("in-process CPU engine, batch ", opt_.batch);
  }

  absl::Status Generate(std::span<const GenerationRequest> requests,
                        const GenerationDone& on_done) override;

 private:
  struct Slot {
    size_t index;  // into the requests
    int id;        // decoder sequence
    Sampler sampler;
    std::vector<int32_t> tokens;
    int prompt_tokens;
    int32_t next;  // sampled, not yet fed
    Stopwatch clock;
  };

  const CpuWeights& weights_;
  const Tokenizer& tok_;
  CpuGeneratorOptions opt_;
};

absl::Status CpuGenerator::Generate(std::span<const GenerationRequest> requests,
                                    const GenerationDone& on_done) {
  if (requests.empty()) return absl::OkStatus();
  if (opt_.batch < 1) return absl::InvalidArgumentError("--batch must be at least 1");
  // Tokenize everything first: prompt errors surface before any decoding, and the longest prompt
  // sizes the cache.
  std::vector<std::vector<int32_t>> prompts(requests.size());
  int64_t longest = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    const GenerationRequest& r = requests[i];
    RESA_RETURN_IF_ERROR(Annotate(r.sampling.Validate(), absl::StrCat("request ", i)));
    RESA_RETURN_IF_ERROR(Annotate(r.resa.Validate(), absl::StrCat("request ", i)));
    if (r.max_new_tokens < 1) {
      return absl::InvalidArgumentError(absl::StrCat("request ", i, ": max_new_tokens < 1"));
    }
    std::string text = r.prompt;
    if (r.chat) {
      const ChatMessage msg{"user", r.prompt};
      auto rendered = tok_.ApplyChatTemplate({&msg, 1}, /*add_generation_prompt=*/true);
      if (!rendered.ok()) return Annotate(rendered.status(), absl::StrCat("request ", i));
      text = *std::move(rendered);
    }
    auto ids = tok_.Encode(text, EncodeOptions{.add_bos = tok_.add_bos_token()});
    if (!ids.ok()) return Annotate(ids.status(), absl::StrCat("request ", i, " prompt"));
    if (ids->empty()) return absl::InvalidArgumentError(absl::StrCat("request ", i, ": empty prompt"));
    prompts[i] = *std::move(ids);
    longest = std::max<int64_t>(longest, int64_t(prompts[i].size()) + r.max_new_tokens);
  }
  const int batch = std::min<int>(opt_.batch, int(requests.size()));
  const int32_t pages_per_seq = int32_t((longest + 1 + kPageTokens - 1) / kPageTokens) + 1;
  RESA_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache,
                        KvCache::Create(weights_.config, pages_per_seq * batch));
  CpuModel model(weights_, *cache);
  Decoder dec(model, *cache);
  const int vocab = weights_.config.vocab_size;
  const std::vector<int32_t> stop_ids = tok_.StopIds();
  const auto is_stop = [&](int32_t t) {
    return std::find(stop_ids.begin(), stop_ids.end(), t) != stop_ids.end();
  };

  std::deque<size_t> queue;
  for (size_t i = 0; i < requests.size(); ++i) queue.push_back(i);
  std::vector<std::unique_ptr<Slot>> active;

  // Ends a sequence: returns its pages and reports it.
  const auto finish = [&](Slot& s, const char* reason) -> absl::Status {
    GenerationResult res;
    res.prompt_tokens = s.prompt_tokens;
    res.generated_tokens = int(s.tokens.size());
    std::vector<int32_t> text_ids = s.tokens;
    if (!text_ids.empty() && is_stop(text_ids.back())) text_ids.pop_back();
    res.text = tok_.Decode(text_ids, /*skip_special=*/true);
    res.finish_reason = reason;
    res.report = dec.report(s.id);
    res.seconds = s.clock.Seconds();
    dec.Finish(s.id);
    return on_done(s.index, std::move(res));
  };
  // Accepts the sampled token `s.next`; true when the sequence is done (reported and finished).
  const auto accept = [&](Slot& s, bool& done) -> absl::Status {
    s.tokens.push_back(s.next);
    const GenerationRequest& r = requests[s.index];
    done = true;
    if (is_stop(s.next)) return finish(s, "stop");
    // The cache holds every sequence's prompt + max_new_tokens, so the budget ends it first.
    if (int(s.tokens.size()) >= r.max_new_tokens) return finish(s, "length");
    done = false;
    return absl::OkStatus();
  };

  while (!queue.empty() || !active.empty()) {
    // Refill: prefill new sequences into free slots and sample their first tokens.
    while (int(active.size()) < batch && !queue.empty()) {
      const size_t i = queue.front();
      queue.pop_front();
      const GenerationRequest& r = requests[i];
      auto slot = std::make_unique<Slot>(
          Slot{i, -1, Sampler(r.sampling), {}, int(prompts[i].size()), 0, Stopwatch()});
      auto id = dec.Start(prompts[i], r.resa, opt_.prefill_chunk);
      if (!id.ok()) return Annotate(id.status(), absl::StrCat("request ", i, " prefill"));
      slot->id = *id;
      slot->next = slot->sampler.Sample(dec.logits(slot->id), vocab);
      bool done = false;
      RESA_RETURN_IF_ERROR(accept(*slot, done));
      if (!done) active.push_back(std::move(slot));
    }
    if (active.empty()) continue;
    std::vector<Decoder::Feed> feeds;
    feeds.reserve(active.size());
    for (const auto& s : active) feeds.push_back({s->id, s->next});
    RESA_RETURN_IF_ERROR(Annotate(dec.Step(feeds), "decode step"));
    std::vector<std::unique_ptr<Slot>> still;
    for (auto& s : active) {
      s->next = s->sampler.Sample(dec.logits(s->id), vocab);
      bool done = false;
      RESA_RETURN_IF_ERROR(accept(*s, done));
      if (!done) still.push_back(std::move(s));
    }
    active = std::move(still);
  }
  return absl::OkStatus();
}

}  // namespace

std::unique_ptr<MathGenerator> MakeCpuGenerator(const CpuWeights& weights,
                                                const Tokenizer& tokenizer,
                                                const CpuGeneratorOptions& options) {
  return std::make_unique<CpuGenerator>(weights, tokenizer, options);
}

}  // namespace resa
