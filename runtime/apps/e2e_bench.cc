#include "runtime/apps/e2e_bench.h"

#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "kernels/cpu/selection.h"
#include "runtime/core/status.h"
#include "runtime/engine/backend_factory.h"
#include "runtime/engine/decoder.h"
#include "runtime/engine/sampler.h"
#include "runtime/engine/synthetic_model.h"

namespace resa {
namespace {

struct E2eOptions {
  std::vector<std::string> models = {"r1-qwen-1.5b", "r1-qwen-7b"};
  std::vector<int> contexts = {32768, 131072, 262144};
  std::vector<int> batches = {1, 8};
  std::vector<std::string> modes = {"dense", "sparse", "resa"};
  int steps = 64;  // timed decode steps per row (after a warm-up of 2 rectify_every + 4)
  std::string device = "cuda";
  float sparse_ratio = 0.1f;
  int min_blocks = 16;
  int rectify_every = 32;
  int gemv_max_rows = 8;  // CUDA: decode rows up to which the GEMV is used instead of cuBLASLt
  bool torch = true;
  bool profile = true;  // after timing: rectify_every eager steps with events per kernel group
  // CUDA programmatic dependent launch: "on", "off", or "both" (every row twice, off then on,
  // as an A/B in the same run; the targets use the "on" rows).
  std::string pdl = "on";
  // Batch-1 gate_up GEMV with SwiGLU in its epilogue: "on", "off" or "both", as --pdl.
  std::string swiglu_epilogue = "on";
  // Prefill / rectification chunks on the wgmma kernel ("wgmma"), the mma.sync one ("mma") or
  // "both" (every row twice, mma first).
  std::string chunk_kernel = "wgmma";
  // Selection threshold hints kept between steps: "on", "off" or "both", as --pdl.
  std::string selection_hints = "on";
  // RMSNorms of GEMV steps (up to --gemv-max-rows rows) inside their GEMVs: "on", "off" or
  // "both", as --pdl.
  std::string fused_norms = "on";
  // L2 fetch granularities (bytes) to run every row with, in order; the targets use the last.
  std::vector<int> l2_fetch = {128};
  std::string python = "python3";
  std::string torch_script = "runtime/apps/e2e_torch_baseline.py";
  // How every step's tokens are sampled on the device (greedy by default, as the targets);
  // sequence b draws from a Sampler seeded with `seed + b`.
  SamplingParams sampling;
};

// Bytes one decode step must move at least (batch B, context L): every weight once (lm_head
// included, the embedding row excluded), then per sequence the K/V it attends to (all of it
// dense; the selected blocks plus every block summary when sparse), plus for ReSA the
// rectification's weights and whole-context K/V read amortised over f steps.
double StepBytes(const ModelConfig& c, int64_t ctx, int batch, DecodeMode mode, const E2eOptions& o) {
  const double hid = c.hidden_size, qkv = c.q_dim() + 2.0 * c.kv_dim(), inter = c.intermediate_size;
  const double weights =
      2.0 * (c.num_layers * (qkv * hid + hid * c.q_dim() + 3.0 * inter * hid) +
             double(c.vocab_size) * hid);
  const double kv_token = 2.0 * c.num_layers * c.num_kv_heads * c.head_dim * 2.0;
  const double dense_kv = double(ctx) * kv_token;
  if (mode == DecodeMode::kDense) return weights + batch * dense_kv;
  const int32_t m = int32_t((ctx + kPageTokens - 1) / kPageTokens);
  const int32_t n = std::min(m, NumSelectedBlocks(m, o.sparse_ratio, o.min_blocks));
  const double per_seq = double(c.num_layers) * c.num_kv_heads *
                         (double(n) * kPageTokens * c.head_dim * 2 * 2 + double(m) * 2 * c.head_dim * 2);
  double bytes = weights + batch * per_seq;
  if (mode == DecodeMode::kResa) bytes += (weights + batch * dense_kv) / o.rectify_every;
  return bytes;
}

using Key = std::tuple<std::string, int, int>;  // model, context, batch

// The PyTorch peer: one process per model (it frees the device before ours allocates).
std::map<Key, double> RunTorch(const E2eOptions& o, const std::string& model, const ModelConfig& c) {
  std::map<Key, double> out;
  std::string cmd = absl::StrCat(o.python, " ", o.torch_script, " --model ", model, " --vocab ",
                                 c.vocab_size, " --hidden ", c.hidden_size, " --inter ",
                                 c.intermediate_size, " --layers ", c.num_layers, " --heads ",
                                 c.num_heads, " --kv-heads ", c.num_kv_heads, " --head-dim ",
                                 c.head_dim, " --contexts ", absl::StrJoin(o.contexts, ","),
                                 " --batches ", absl::StrJoin(o.batches, ","));
  std::fprintf(stderr, "running the PyTorch baseline: %s\n", cmd.c_str());
  FILE* f = popen(cmd.c_str(), "r");
  if (f == nullptr) {
    std::printf("{\"bench\":\"e2e_torch\",\"error\":\"popen failed\"}\n");
    return out;
  }
  char line[4096];
  while (std::fgets(line, sizeof line, f) != nullptr) {
    std::fputs(line, stdout);
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.contains("ms")) continue;
    out[Key{model, j.value("context", 0), j.value("batch", 0)}] = j["ms"].get<double>();
  }
  const int rc = pclose(f);
  if (rc != 0) std::printf("{\"bench\":\"e2e_torch\",\"error\":\"exit status %d\"}\n", rc);
  std::fflush(stdout);
  return out;
}

struct Row {
  std::string model;
  int context, batch;
  DecodeMode mode;
  CudaTuning tuning;  // the variant this row ran (--pdl, --swiglu-epilogue)
  double ms = 0, rect_ms = 0, bound_ms = 0, torch_ms = 0;
  std::vector<std::pair<std::string, double>> profile;  // ms per step by kernel group
  double profile_rect_ms = 0;                            // of which rectification (per step)
  // Timed steps' rows selected from their hint's candidates / with the whole tail.
  int64_t hint_hits = 0, hint_misses = 0, hist_hits = 0;
};

absl::StatusOr<Row> RunRow(ModelBackend& backend, const std::string& model, int ctx, int batch,
                           DecodeMode mode, const E2eOptions& o, double copy_gbps) {
  Row row{model, ctx, batch, mode};
  const ModelConfig& c = backend.config();
  ResaOptions ro{mode, o.sparse_ratio, o.min_blocks, o.rectify_every};
  Decoder dec(backend);
  // Logits stay on the device; each step's tokens are sampled there (ModelBackend::Sample, as
  // --temperature / --top-k / --top-p say; greedy by default) and only the ids come back, as a
  // serving loop would run.
  dec.set_host_logits(false);
  std::vector<int> ids;
  // The context starts short of `ctx` by the steps this row decodes: every step attends to at
  // most ctx keys (at 256K the selection stays on its shared-memory path, <= 16384 blocks).
  const int warm = 2 * o.rectify_every + 4;
  const int start = ctx - (warm + o.steps + (o.profile ? o.rectify_every : 0));
  if (start < kPageTokens) return absl::InvalidArgumentError("context shorter than the steps");
  for (int b = 0; b < batch; ++b) {
    SequenceKv kv;
    RESA_RETURN_IF_ERROR(backend.AdoptSyntheticContext(kv, start));
    auto id = dec.Adopt(std::move(kv), ro);
    if (!id.ok()) return id.status();
    ids.push_back(*id);
  }
  // The warm-up runs two rectifications (buffers reach their size; the first pass of a shape
  // runs eagerly, the second is captured) and captures the decode graphs.
  std::vector<Decoder::Feed> feeds(batch);
  std::vector<Sampler> samplers;
  std::vector<RowSampling> draws(batch);
  std::vector<int32_t> sampled(batch);
  for (int b = 0; b < batch; ++b) {
    SamplingParams sp = o.sampling;
    sp.seed = o.sampling.seed + uint64_t(b);
    samplers.emplace_back(sp);
    sampled[b] = int32_t((b * 131) % c.vocab_size);  // adopted contexts have no logits yet
  }
  std::chrono::steady_clock::time_point t0;
  double r0 = 0;
  SelectionHintTally h0;
  for (int step = 0; step < warm + o.steps; ++step) {
    if (step == warm) {
      h0 = ReadSelectionHintTally();  // a device read: before the clock starts
      t0 = std::chrono::steady_clock::now();
      r0 = dec.rectify_seconds();
    }
    for (int b = 0; b < batch; ++b) feeds[b] = {ids[b], sampled[b]};
    RESA_RETURN_IF_ERROR(dec.Step(feeds));
    for (int b = 0; b < batch; ++b) draws[b] = samplers[b].Next(b);  // feed order = logits rows
    RESA_RETURN_IF_ERROR(backend.Sample(draws, sampled.data()));
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  row.ms = 1e3 * secs / o.steps;
  row.rect_ms = 1e3 * (dec.rectify_seconds() - r0) / o.steps;
  const SelectionHintTally h1 = ReadSelectionHintTally();
  row.hint_hits = h1.from_candidates - h0.from_candidates;
  row.hint_misses = h1.whole_tail - h0.whole_tail;
  row.hist_hits = h1.from_histogram - h0.from_histogram;
  row.bound_ms = 1e3 * StepBytes(c, ctx, batch, mode, o) / (copy_gbps * 1e9);
  if (o.profile) {
    // Where the time goes: the same steps eagerly, one event per group of kernels, over one
    // rectification interval (so ReSA's rectification is in it once).
    backend.set_profiling(true);
    backend.TakeProfile();
    const double rect0 = dec.rectify_seconds();
    for (int step = 0; step < o.rectify_every; ++step) {
      for (int b = 0; b < batch; ++b) feeds[b] = {ids[b], int32_t((step * 31 + b) % c.vocab_size)};
      absl::Status st = dec.Step(feeds);
      if (!st.ok()) {
        backend.set_profiling(false);
        return st;
      }
    }
    backend.set_profiling(false);
    row.profile = backend.TakeProfile();
    for (auto& [group, ms] : row.profile) ms /= o.rectify_every;
    row.profile_rect_ms = 1e3 * (dec.rectify_seconds() - rect0) / o.rectify_every;
  }
  return row;
}

// The table's hints cell: off, or the share of the timed steps' selections that ranked only
// their hint's candidates, and (h) the share placed by the scoring's histogram.
std::string HintCell(const Row& r) {
  if (!r.tuning.selection_hints) return "off";
  const int64_t n = r.hint_hits + r.hint_misses;
  if (n == 0) return "on";
  return absl::StrFormat("on %.0f%% (h %.0f%%)", 100.0 * double(r.hint_hits) / double(n),
                         100.0 * double(r.hist_hits) / double(n));
}

int RunE2e(const E2eOptions& o) {
  if (absl::Status st = o.sampling.Validate(); !st.ok()) {
    std::fprintf(stderr, "resa-bench e2e: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  auto device = ParseDevice(o.device);
  if (!device.ok()) {
    std::fprintf(stderr, "resa-bench e2e: %s\n", std::string(device.status().message()).c_str());
    return 1;
  }
  if (o.l2_fetch.empty()) {
    std::fprintf(stderr, "resa-bench e2e: --l2-fetch needs at least one value\n");
    return 1;
  }
  auto copy = MeasureDeviceCopyGbps(*device);
  if (!copy.ok()) {
    std::fprintf(stderr, "resa-bench e2e: %s\n", std::string(copy.status().message()).c_str());
    return 1;
  }
  std::printf(
      "{\"bench\":\"e2e_copy\",\"gbps\":%.1f,\"gemv_max_rows\":%d,\"sampling\":"
      "{\"temperature\":%g,\"top_k\":%d,\"top_p\":%g,\"seed\":%llu}}\n",
      *copy, o.gemv_max_rows, o.sampling.temperature, o.sampling.top_k, o.sampling.top_p,
      static_cast<unsigned long long>(o.sampling.seed));
  // Variants of each row (an A/B inside this run): off before on for each "both".
  auto settings = [](const std::string& v) {
    std::vector<bool> out;
    if (v == "off" || v == "both") out.push_back(false);
    if (v == "on" || v == "both") out.push_back(true);
    return out;
  };
  struct RestoreTuning {  // the process's settings come back however this returns
    CudaTuning before = GetCudaTuning();
    ~RestoreTuning() { SetCudaTuning(before); }
  } restore_tuning;
  // A variant: the process's settings with the six this bench varies, so that any other
  // switch keeps what the environment chose instead of CudaTuning's default.
  auto make_variant = [&](bool pdl, bool swiglu, bool norms, bool wgmma, bool hints, int l2) {
    CudaTuning t = restore_tuning.before;
    t.programmatic_launch = pdl;
    t.swiglu_epilogue = swiglu;
    t.fused_norms = norms;
    t.wgmma_chunk = wgmma;
    t.selection_hints = hints;
    t.l2_fetch_bytes = l2;
    return t;
  };
  std::vector<CudaTuning> variants;
  const std::string chunk_on_off = o.chunk_kernel == "wgmma" ? "on"
                                   : o.chunk_kernel == "mma" ? "off"
                                                             : "both";
  for (const bool pdl : settings(o.pdl)) {
    for (const bool swiglu : settings(o.swiglu_epilogue)) {
      for (const bool norms : settings(o.fused_norms)) {
        for (const bool wgmma : settings(chunk_on_off)) {
          for (const bool hints : settings(o.selection_hints)) {
            for (const int l2 : o.l2_fetch) {
              variants.push_back(make_variant(pdl, swiglu, norms, wgmma, hints, l2));
            }
          }
        }
      }
    }
  }
  auto variant_json = [](const CudaTuning& t) {
    return absl::StrFormat(
        "\"pdl\":%s,\"swiglu_epilogue\":%s,\"fused_norms\":%s,\"chunk_kernel\":\"%s\","
        "\"selection_hints\":%s,\"l2_fetch\":%d",
        t.programmatic_launch ? "true" : "false", t.swiglu_epilogue ? "true" : "false",
        t.fused_norms ? "true" : "false", t.wgmma_chunk ? "wgmma" : "mma",
        t.selection_hints ? "true" : "false", t.l2_fetch_bytes);
  };
  std::vector<Row> rows;
  for (const std::string& model : o.models) {
    auto cfg = SyntheticConfig(model);
    if (!cfg.ok()) {
      std::fprintf(stderr, "resa-bench e2e: %s\n", std::string(cfg.status().message()).c_str());
      return 1;
    }
    std::map<Key, double> torch;
    if (o.torch) torch = RunTorch(o, model, *cfg);
    BackendOptions bo{*device, 0};
    bo.gemv_max_rows = o.gemv_max_rows;
    auto backend = MakeRandomBackend(*cfg, 1, bo);
    if (!backend.ok()) {
      std::fprintf(stderr, "resa-bench e2e: %s\n", std::string(backend.status().message()).c_str());
      return 1;
    }
    std::fprintf(stderr, "%s: %s\n", model.c_str(), backend->description.c_str());
    ModelBackend& m = *backend->model;
    for (int ctx : o.contexts) {
      for (int batch : o.batches) {
        const int64_t need = int64_t(batch) * (ctx + kPageTokens);
        if (need > m.max_tokens()) {
          std::printf("{\"bench\":\"e2e\",\"model\":\"%s\",\"context\":%d,\"batch\":%d,"
                      "\"skipped\":\"needs %lld KV tokens, the device holds %d\"}\n",
                      model.c_str(), ctx, batch, static_cast<long long>(need), m.max_tokens());
          continue;
        }
        for (const std::string& mode_name : o.modes) {
          for (const CudaTuning& variant : variants) {
            const DecodeMode mode = ParseDecodeMode(mode_name).value();
            SetCudaTuning(variant);
            auto row = RunRow(m, model, ctx, batch, mode, o, *copy);
            if (!row.ok()) {
              std::printf(
                  "{\"bench\":\"e2e\",\"model\":\"%s\",\"context\":%d,\"batch\":%d,"
                  "\"mode\":\"%s\",%s,\"error\":%s}\n",
                  model.c_str(), ctx, batch, mode_name.c_str(), variant_json(variant).c_str(),
                  nlohmann::json(std::string(row.status().message())).dump().c_str());
              continue;
            }
            row->tuning = variant;
            auto it = torch.find(Key{model, ctx, batch});
            row->torch_ms = it == torch.end() ? 0.0 : it->second;
            nlohmann::json prof = nlohmann::json::object();
            for (const auto& [group, ms] : row->profile) prof[group] = ms;
            if (!row->profile.empty()) prof["rectification_wall"] = row->profile_rect_ms;
            std::printf(
                "{\"bench\":\"e2e\",\"model\":\"%s\",\"context\":%d,\"batch\":%d,"
                "\"mode\":\"%s\",%s,\"ms_per_step\":%.4f,\"rectify_ms_per_step\":%.4f,"
                "\"bound_ms\":%.4f,\"ratio_to_bound\":%.3f,\"torch_dense_ms\":%.4f,"
                "\"hinted_selections\":%lld,\"whole_tail_selections\":%lld,"
                "\"histogram_selections\":%lld,\"profile_ms_per_step\":%s}\n",
                model.c_str(), ctx, batch, mode_name.c_str(), variant_json(variant).c_str(),
                row->ms, row->rect_ms, row->bound_ms, row->ms / row->bound_ms, row->torch_ms,
                static_cast<long long>(row->hint_hits), static_cast<long long>(row->hint_misses),
                static_cast<long long>(row->hist_hits), prof.dump().c_str());
            std::fflush(stdout);
            rows.push_back(*row);
          }
        }
      }
    }
  }
  // Table and targets (stderr), ratios against same-run baselines only.
  const CudaTuning main_variant =
      make_variant(o.pdl != "off", o.swiglu_epilogue != "off", o.fused_norms != "off",
                   o.chunk_kernel != "mma", o.selection_hints != "off", o.l2_fetch.back());
  auto find = [&](const std::string& model, int ctx, int batch, DecodeMode mode,
                  const CudaTuning& t) -> const Row* {
    for (const Row& r : rows) {
      if (r.model == model && r.context == ctx && r.batch == batch && r.mode == mode &&
          r.tuning.programmatic_launch == t.programmatic_launch &&
          r.tuning.swiglu_epilogue == t.swiglu_epilogue && r.tuning.fused_norms == t.fused_norms &&
          r.tuning.wgmma_chunk == t.wgmma_chunk && r.tuning.selection_hints == t.selection_hints &&
          r.tuning.l2_fetch_bytes == t.l2_fetch_bytes) {
        return &r;
      }
    }
    return nullptr;
  };
  std::fprintf(
      stderr,
      "\ndevice copy ceiling %.0f GB/s (measured now); ms per decode step (one token per "
      "sequence, sampled on the device: %s)\n"
      "| model | ctx | batch | mode | pdl | swiglu ep. | norms | chunk | hints | L2 fetch | "
      "ms/step | bound ms | x bound | rectify share | vs our dense | torch dense ms | "
      "vs torch |\n"
      "|---|---:|---:|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
      *copy,
      o.sampling.temperature == 0.0f
          ? "greedy"
          : absl::StrFormat("temperature %g, top_k %d, top_p %g", o.sampling.temperature,
                            o.sampling.top_k, o.sampling.top_p)
                .c_str());
  for (const Row& r : rows) {
    const Row* dense = find(r.model, r.context, r.batch, DecodeMode::kDense, r.tuning);
    std::fprintf(
        stderr,
        "| %s | %d | %d | %s | %s | %s | %s | %s | %s | %d | %.3f | %.3f | %.2f | %.1f%% | %s | "
        "%s | %s |\n",
        r.model.c_str(), r.context, r.batch, DecodeModeName(r.mode),
        r.tuning.programmatic_launch ? "on" : "off", r.tuning.swiglu_epilogue ? "on" : "off",
        r.tuning.fused_norms ? "fused" : "kernel", r.tuning.wgmma_chunk ? "wgmma" : "mma",
        HintCell(r).c_str(), r.tuning.l2_fetch_bytes, r.ms, r.bound_ms, r.ms / r.bound_ms,
        100.0 * r.rect_ms / r.ms, dense ? absl::StrFormat("%.2fx", dense->ms / r.ms).c_str() : "-",
        r.torch_ms > 0 ? absl::StrFormat("%.3f", r.torch_ms).c_str() : "-",
        r.torch_ms > 0 ? absl::StrFormat("%.2fx", r.torch_ms / r.ms).c_str() : "-");
  }
  std::fprintf(stderr,
               "\nwhere the time goes: device ms per step by kernel group (eager with events, "
               "no graphs; rectification's kernels are inside the groups)\n");
  for (const Row& r : rows) {
    if (r.profile.empty()) continue;
    std::string line = absl::StrFormat(
        "%s ctx %d b%d %-6s pdl %-3s swiglu ep. %-3s norms %-6s chunk %-5s L2 fetch %d:", r.model,
        r.context, r.batch, DecodeModeName(r.mode), r.tuning.programmatic_launch ? "on" : "off",
        r.tuning.swiglu_epilogue ? "on" : "off", r.tuning.fused_norms ? "fused" : "kernel",
        r.tuning.wgmma_chunk ? "wgmma" : "mma", r.tuning.l2_fetch_bytes);
    double sum = 0;
    for (const auto& [group, ms] : r.profile) {
      absl::StrAppendFormat(&line, " %s %.3f", group, ms);
      sum += ms;
    }
    absl::StrAppendFormat(&line, " | sum %.3f (graph step %.3f) | rectification wall %.3f", sum,
                          r.ms, r.profile_rect_ms);
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  auto target = [&](const char* what, bool have, double value, bool met, const char* want) {
    std::fprintf(stderr, "target %-46s %s (%s; want %s)\n", what,
                 !have ? "NOT MEASURED" : met ? "met" : "MISSED",
                 have ? absl::StrFormat("%.3f", value).c_str() : "-", want);
  };
  const int k256 = 262144;
  const Row* d15 = find("r1-qwen-1.5b", k256, 1, DecodeMode::kDense, main_variant);
  const Row* r15 = find("r1-qwen-1.5b", k256, 1, DecodeMode::kResa, main_variant);
  const Row* d7 = find("r1-qwen-7b", k256, 8, DecodeMode::kDense, main_variant);
  const Row* r7 = find("r1-qwen-7b", k256, 8, DecodeMode::kResa, main_variant);
  target("1.5B b1 256K dense / bytes bound", d15, d15 ? d15->ms / d15->bound_ms : 0,
         d15 && d15->ms <= 1.15 * d15->bound_ms, "<= 1.15");
  target("1.5B b1 256K ReSA speed-up vs our dense", d15 && r15, d15 && r15 ? d15->ms / r15->ms : 0,
         d15 && r15 && d15->ms >= 2.2 * r15->ms, ">= 2.2");
  target("1.5B b1 256K ReSA speed-up vs PyTorch dense", r15 && r15->torch_ms > 0,
         r15 ? r15->torch_ms / r15->ms : 0, r15 && r15->torch_ms >= 2.6 * r15->ms, ">= 2.6");
  target("7B b8 256K ReSA speed-up vs our dense", d7 && r7, d7 && r7 ? d7->ms / r7->ms : 0,
         d7 && r7 && d7->ms >= 3.0 * r7->ms, ">= 3");
  for (const Row* r : {r15, r7}) {
    if (r == nullptr) continue;
    target(absl::StrCat(r->model, " b", r->batch, " 256K rectification share").c_str(), true,
           r->rect_ms / r->ms, r->rect_ms <= 0.25 * r->ms, "<= 0.25");
  }
  return 0;
}

}  // namespace

void AddE2eBenchCommand(CLI::App& app, int& exit_code) {
  static E2eOptions o;
  CLI::App* e = app.add_subcommand(
      "e2e", "Whole-model decode speed (dense/sparse/ReSA) vs the bytes bound and PyTorch");
  e->add_option("--models", o.models, "Synthetic shapes")->delimiter(',')->capture_default_str();
  e->add_option("--contexts", o.contexts, "Context lengths")->delimiter(',')->capture_default_str();
  e->add_option("--batches", o.batches, "Batch sizes")->delimiter(',')->capture_default_str();
  e->add_option("--modes", o.modes, "dense, sparse, resa")->delimiter(',')->capture_default_str();
  e->add_option("--steps", o.steps, "Timed decode steps per row")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  e->add_option("--device", o.device, "cuda (cpu has no synthetic-context fill)")
      ->capture_default_str();
  e->add_option("--sparse-ratio", o.sparse_ratio, "Kept fraction of blocks")->capture_default_str();
  e->add_option("--min-blocks", o.min_blocks, "Sparse steps read at least this many blocks")
      ->capture_default_str();
  e->add_option("--rectify-every", o.rectify_every, "ReSA rectification interval")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  e->add_flag("!--no-torch", o.torch, "Skip the PyTorch baseline");
  e->add_option("--gemv-max-rows", o.gemv_max_rows,
                "CUDA: steps up to this many rows use the GEMV kernels (one row: CUDA cores; "
                "batches: tensor cores) with their fused epilogues, larger ones cuBLASLt")
      ->capture_default_str()
      ->check(CLI::Range(0, 8));
  e->add_flag("!--no-profile", o.profile, "Skip the per-kernel-group profile of each row");
  e->add_option("--pdl", o.pdl,
                "Programmatic dependent launch of the step's kernels: on, off, or both (each row "
                "twice, off then on, in the same run)")
      ->check(CLI::IsMember({"on", "off", "both"}))
      ->capture_default_str();
  e->add_option("--swiglu-epilogue", o.swiglu_epilogue,
                "GEMV epilogues of steps of up to --gemv-max-rows rows: gate_up writing the "
                "SwiGLU activations and qkv writing q/k/v with bias and RoPE, and dense decode "
                "rows' K/V into the cache (no SiluMul, QkvRope, WriteKv launches): on, off, or "
                "both (each row twice, in the same run)")
      ->check(CLI::IsMember({"on", "off", "both"}))
      ->capture_default_str();
  e->add_option("--fused-norms", o.fused_norms,
                "RMSNorms of steps of up to --gemv-max-rows rows inside their GEMVs (o_proj and "
                "down add into the "
                "residual, qkv and gate_up scale by 1 / rms; no norm launches but the first "
                "and last): on, off, or both (each row twice, off then on, in the same run)")
      ->check(CLI::IsMember({"on", "off", "both"}))
      ->capture_default_str();
  e->add_option("--chunk-kernel", o.chunk_kernel,
                "Prefill and rectification chunks on the wgmma attention kernel (sm_90), the "
                "mma.sync one, or both (each row twice, mma first, in the same run)")
      ->check(CLI::IsMember({"wgmma", "mma", "both"}))
      ->capture_default_str();
  e->add_option("--selection-hints", o.selection_hints,
                "Fused selections keeping a threshold hint per row between steps (the same "
                "blocks; the tail ranks only the hint's candidates when they suffice): on, off, "
                "or both (each row twice, off then on, in the same run)")
      ->check(CLI::IsMember({"on", "off", "both"}))
      ->capture_default_str();
  e->add_option("--l2-fetch", o.l2_fetch,
                "CUDA: L2 fetch granularities in bytes (0-128; the device limit set before each "
                "step) to run every row with, in the same run, in order (e.g. 64,128); the "
                "targets read the last")
      ->delimiter(',')
      ->check(CLI::Range(0, 128))
      ->capture_default_str();
  e->add_option("--temperature", o.sampling.temperature,
                "Sampling temperature of every step's tokens (0 = greedy, as the targets)")
      ->capture_default_str();
  e->add_option("--top-k", o.sampling.top_k, "Sampling: keep the k most likely tokens (0 = all)")
      ->capture_default_str();
  e->add_option("--top-p", o.sampling.top_p, "Sampling: nucleus mass, in (0, 1]")
      ->capture_default_str();
  e->add_option("--seed", o.sampling.seed, "Sampling: sequence b draws with seed + b")
      ->capture_default_str();
  e->add_option("--python", o.python, "Python with torch for the baseline")->capture_default_str();
  e->add_option("--torch-script", o.torch_script, "The baseline script")->capture_default_str();
  e->callback([&exit_code] { exit_code = RunE2e(o); });
}

}  // namespace resa
