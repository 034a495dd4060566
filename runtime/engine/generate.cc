#include "runtime/engine/generate.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "runtime/core/status.h"
#include "runtime/core/sysinfo.h"

namespace resa {

double GenerateStats::prefill_tokens_per_second() const {
  return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0.0;
}
double GenerateStats::decode_tokens_per_second() const {
  return decode_seconds > 0 && generated_tokens > 1 ? (generated_tokens - 1) / decode_seconds : 0.0;
}

absl::StatusOr<GenerateStats> Generate(CpuModel& model, KvCache& cache,
                                       std::span<const int32_t> prompt,
                                       const GenerateOptions& options,
                                       const TokenCallback& on_token) {
  CpuBackend backend(model, cache);
  return Generate(backend, prompt, options, on_token);
}

absl::StatusOr<GenerateStats> Generate(ModelBackend& model, std::span<const int32_t> prompt,
                                       const GenerateOptions& options,
                                       const TokenCallback& on_token) {
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  RESA_RETURN_IF_ERROR(options.sampling.Validate());
  RESA_RETURN_IF_ERROR(options.resa.Validate());
  const int vocab = model.config().vocab_size;
  const int32_t capacity = model.max_tokens();
  if (int64_t(prompt.size()) >= capacity) {
    return absl::InvalidArgumentError(
        absl::StrCat("the prompt has ", prompt.size(), " tokens but the context holds ", capacity,
                     " (prompt + at least one generated token); raise --ctx"));
  }
  GenerateStats stats;
  stats.prompt_tokens = int(prompt.size());
  Sampler sampler(options.sampling);
  Decoder dec(model);
  dec.set_host_logits(options.host_sampling);
  model.ResetStats();

  Stopwatch sw;
  RESA_ASSIGN_OR_RETURN(const int id, dec.Start(prompt, options.resa, options.prefill_chunk));
  stats.prefill_seconds = sw.Seconds();
  model.ResetStats();

  sw.Reset();
  // Rank 0's sample is everyone's (one int broadcast per token in a grid).
  // Backend sampling reads the logits row of the last forward with logits: the prefill's last
  // chunk, then each step's one row (rectification passes compute none).
  auto sample = [&]() -> absl::StatusOr<int32_t> {
    int32_t t = 0;
    if (options.host_sampling) {
      t = sampler.Sample(dec.logits(id), vocab);
    } else {
      const RowSampling row = sampler.Next(0);
      RESA_RETURN_IF_ERROR(model.Sample({&row, 1}, &t));
    }
    if (options.agree != nullptr && options.agree->size() > 1) {
      RESA_RETURN_IF_ERROR(options.agree->Broadcast(std::span<int32_t>(&t, 1), 0));
    }
    return t;
  };
  RESA_ASSIGN_OR_RETURN(int32_t token, sample());
  while (true) {
    ++stats.generated_tokens;
    const bool is_stop = std::find(options.stop_ids.begin(), options.stop_ids.end(), token) !=
                         options.stop_ids.end();
    if (on_token && !on_token(token)) break;
    if (is_stop) {
      stats.stopped_by_token = true;
      break;
    }
    if (stats.generated_tokens >= options.max_new_tokens) break;
    if (dec.kv(id).length >= capacity) {
      stats.stopped_by_context = true;
      break;
    }
    if (stats.generated_tokens == 1) sw.Reset();  // decode rate excludes the prefill's token
    Decoder::Feed feed{id, token};
    absl::Status st = dec.Step({&feed, 1});
    if (absl::IsResourceExhausted(st)) {
      stats.stopped_by_context = true;
      break;
    }
    RESA_RETURN_IF_ERROR(st);
    RESA_ASSIGN_OR_RETURN(token, sample());
  }
  stats.decode_seconds = stats.generated_tokens > 1 ? sw.Seconds() : 0.0;
  stats.report = dec.report(id);
  stats.forward = model.stats();
  stats.rectify_seconds = dec.rectify_seconds();
  return stats;
}

}  // namespace resa
