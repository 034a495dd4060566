#include "runtime/apps/generate_command.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/str_format.h"
#include "runtime/apps/model_loading.h"
#include "runtime/core/status.h"
#include "runtime/core/sysinfo.h"
#include "runtime/engine/backend_factory.h"
#include "runtime/engine/generate.h"
#include "runtime/engine/kv_cache.h"

namespace resa {

void AddGenerationFlags(CLI::App& cmd, GenerateCommandOptions& o) {
  cmd.add_option("-m,--model", o.model,
                 "GGUF file, Hugging Face model directory, or a cached model name "
                 "(default, qwen2.5-coder-1.5b)")
      ->capture_default_str();
  auto* p = cmd.add_option("-p,--prompt", o.prompt, "Prompt text");
  auto* pf = cmd.add_option("-f,--prompt-file", o.prompt_file, "Read the prompt from a file");
  p->excludes(pf);
  cmd.add_flag("--chat", o.chat, "Wrap the prompt as a user turn in the model's chat template");
  cmd.add_option("--system", o.system, "System message for --chat (default: the template's)");
  cmd.add_option("-n,--max-new-tokens", o.max_new_tokens, "Tokens to generate at most")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 24));
  cmd.add_option("--temperature", o.temperature, "Sampling temperature; 0 = greedy")
      ->capture_default_str();
  cmd.add_option("--top-p", o.top_p, "Nucleus sampling mass in (0, 1]")->capture_default_str();
  cmd.add_option("--top-k", o.top_k, "Keep the k most likely tokens; 0 = all")
      ->capture_default_str();
  cmd.add_option("--seed", o.seed, "Sampling seed")->capture_default_str();
  cmd.add_option("-t,--threads", o.threads, "CPU threads; 0 = all cores")->capture_default_str();
  cmd.add_option("-c,--ctx", o.ctx, "Context length (prompt + generated tokens) to allocate")
      ->capture_default_str()
      ->check(CLI::Range(16, 1 << 24));
  cmd.add_option("--prefill-chunk", o.prefill_chunk,
                 "Prompt tokens per prefill step; 0 = the device's default (cpu 512, cuda 4096)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 20));
  cmd.add_flag("-q,--quiet", o.quiet, "No progress bar or stats line");
  cmd.add_option("--device", o.device,
                 "Where the model runs: cpu, or cuda (bf16 weights and KV cache on GPU 0)")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  AddResaFlags(cmd, o.mode, o.sparse_ratio, o.min_blocks, o.rectify_every);
}

void AddGenerateCommand(CLI::App& app, GenerateCommandOptions& o, int& exit_code) {
  CLI::App* cmd = app.add_subcommand("generate", "Generate text from a prompt (one sequence)");
  AddGenerationFlags(*cmd, o);
  cmd->callback([&o, &exit_code] { exit_code = RunGenerate(o); });
}

void AddResaFlags(CLI::App& cmd, std::string& mode, float& sparse_ratio, int& min_blocks,
                  int& rectify_every) {
  cmd.add_option("--mode", mode,
                 "Decoding: dense, sparse (block-sparse, never rectified) or resa (block-sparse, "
                 "rectified densely every --rectify-every tokens)")
      ->capture_default_str()
      ->check(CLI::IsMember({"dense", "sparse", "resa"}));
  AddSparseFlags(cmd, sparse_ratio, min_blocks, rectify_every);
}

void AddSparseFlags(CLI::App& cmd, float& sparse_ratio, int& min_blocks, int& rectify_every) {
  cmd.add_option("--sparse-ratio", sparse_ratio,
                 "Fraction of 16-token KV blocks each sparse step reads (1 = dense)")
      ->capture_default_str();
  cmd.add_option("--min-blocks", min_blocks, "Sparse steps read at least this many blocks")
      ->capture_default_str();
  cmd.add_option("--rectify-every", rectify_every,
                 "ReSA: re-run the last f generated tokens densely every f tokens")
      ->capture_default_str();
}

absl::StatusOr<std::string> ReadPrompt(const GenerateCommandOptions& o) {
  std::string prompt = o.prompt;
  if (!o.prompt_file.empty()) {
    std::ifstream in(o.prompt_file, std::ios::binary);
    if (!in) return absl::NotFoundError("--prompt-file " + o.prompt_file + ": cannot open");
    std::stringstream ss;
    ss << in.rdbuf();
    prompt = ss.str();
    if (prompt.empty()) {
      return absl::InvalidArgumentError("--prompt-file " + o.prompt_file + " is empty");
    }
  }
  if (prompt.empty()) {
    return absl::InvalidArgumentError("no prompt: pass --prompt TEXT or --prompt-file PATH");
  }
  return prompt;
}

absl::StatusOr<std::vector<int32_t>> PromptIds(const GenerateCommandOptions& o,
                                               const std::string& prompt, const Tokenizer& tok) {
  absl::StatusOr<std::vector<int32_t>> ids;
  if (o.chat) {
    // The prompt and system text are content: special-token strings in them stay text.
    std::vector<ChatMessage> msgs;
    if (!o.system.empty()) msgs.push_back({"system", o.system});
    msgs.push_back({"user", prompt});
    ids = EncodeChat(tok, msgs, /*add_generation_prompt=*/true);
  } else {
    ids = tok.Encode(prompt, EncodeOptions{.add_bos = tok.add_bos_token(), .parse_special = false});
  }
  if (!ids.ok()) return ids.status();
  if (ids->empty()) return absl::InvalidArgumentError("the prompt encodes to no tokens");
  if (int64_t(ids->size()) >= o.ctx) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "the prompt is %d tokens but --ctx is %d (it must also hold the generated tokens); "
        "raise --ctx",
        ids->size(), o.ctx));
  }
  return ids;
}

std::string DecodeTimeSplit(const GenerateStats& stats) {
  const ForwardStats& f = stats.forward;
  if (!f.phases_timed) {
    return absl::StrFormat(
        "rectification %.3fs, rest of decode %.3fs (selection and attention are not timed apart "
        "from the rest of a step on this device)",
        stats.rectify_seconds, std::max(0.0, stats.decode_seconds - stats.rectify_seconds));
  }
  const double rest = std::max(0.0, stats.decode_seconds - f.selection_seconds -
                                        f.sparse_attention_seconds - stats.rectify_seconds);
  return absl::StrFormat("selection %.3fs, sparse attention %.3fs, rectification %.3fs, rest %.3fs",
                         f.selection_seconds, f.sparse_attention_seconds, stats.rectify_seconds,
                         rest);
}

namespace {

int Fail(const absl::Status& st) {
  std::fprintf(stderr, "resa generate: error: %s\n", std::string(st.message()).c_str());
  return 1;
}

}  // namespace

int RunGenerate(const GenerateCommandOptions& o) {
  SamplingParams sampling{o.temperature, o.top_k, o.top_p, o.seed};
  if (absl::Status st = sampling.Validate(); !st.ok()) return Fail(st);
  // Everything that can be checked without the model is checked before it loads.
  auto prompt = ReadPrompt(o);
  if (!prompt.ok()) return Fail(prompt.status());
  auto device = ParseDevice(o.device);
  if (!device.ok()) return Fail(device.status());
  if (absl::Status st = CheckDevice(*device); !st.ok()) return Fail(st);
  auto mode = ParseDecodeMode(o.mode);
  if (!mode.ok()) return Fail(mode.status());
  const ResaOptions resa{*mode, o.sparse_ratio, o.min_blocks, o.rectify_every};
  if (absl::Status st = resa.Validate(); !st.ok()) return Fail(st);
  const int threads = ConfigureThreads(o.threads);

  LoadOptions lo;
  lo.progress = !o.quiet;
  auto model = LoadModel(o.model, lo);
  if (!model.ok()) return Fail(model.status());
  const ModelConfig& cfg = model->weights->config;
  const Tokenizer& tok = *model->tokenizer;
  auto ids = PromptIds(o, *prompt, tok);
  if (!ids.ok()) return Fail(ids.status());
  const int32_t pages = (o.ctx + kPageTokens - 1) / kPageTokens;
  std::unique_ptr<KvCache> cache;
  std::unique_ptr<CpuModel> cpu;
  std::unique_ptr<ModelBackend> backend;
  if (*device == Device::kCpu) {
    auto c = KvCache::Create(cfg, pages);
    if (!c.ok()) return Fail(c.status());
    cache = std::move(*c);
    cpu = std::make_unique<CpuModel>(*model->weights, *cache);
  } else {
    auto b = MakeBackend(*model->weights, BackendOptions{*device, int64_t(pages) * kPageTokens});
    if (!b.ok()) return Fail(b.status());
    backend = std::move(b->model);
    if (!o.quiet) std::fprintf(stderr, "[device] %s\n", b->description.c_str());
  }

  GenerateOptions go;
  go.max_new_tokens = o.max_new_tokens;
  go.prefill_chunk = o.prefill_chunk;
  go.sampling = sampling;
  go.stop_ids = tok.StopIds();
  go.resa = resa;
  StreamDecoder stream(tok);
  auto on_token = [&](int32_t t) {
    std::string piece = stream.Push(t);
    if (!piece.empty()) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    }
    return true;
  };
  auto stats = cpu != nullptr ? Generate(*cpu, *cache, *ids, go, on_token)
                              : Generate(*backend, *ids, go, on_token);
  std::string rest = stream.Flush();
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  if (!stats.ok()) return Fail(stats.status());
  if (!o.quiet) {
    std::fprintf(stderr,
                 "[stats] prompt %d tokens | prefill %.1f tok/s | decode %.1f tok/s (%d tokens) | "
                 "peak memory %.0f MiB | %d threads | %s%s\n",
                 stats->prompt_tokens, stats->prefill_tokens_per_second(),
                 stats->decode_tokens_per_second(), stats->generated_tokens,
                 PeakRssBytes() / 1048576.0, threads, o.device.c_str(),
                 stats->stopped_by_context ? " | stopped: context full (raise --ctx)" : "");
    if (go.resa.mode != DecodeMode::kDense) {
      const SequenceReport& r = stats->report;
      std::fprintf(stderr,
                   "[%s] blocks read %lld of %lld (%.1f%%) | sparse steps %d of %d | "
                   "rectifications %d (%d tokens) | time: %s\n",
                   DecodeModeName(go.resa.mode), static_cast<long long>(r.blocks_read),
                   static_cast<long long>(r.blocks_total),
                   r.blocks_total > 0 ? 100.0 * r.blocks_read / r.blocks_total : 0.0,
                   r.sparse_steps, r.decode_steps, r.rectifications, r.rectified_tokens,
                   DecodeTimeSplit(*stats).c_str());
    }
  }
  return 0;
}

}  // namespace resa
