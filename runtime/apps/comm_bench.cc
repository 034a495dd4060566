#include "runtime/apps/comm_bench.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/cpu/selection.h"
#include "parallel/communicator_factory.h"
#include "parallel/counting_communicator.h"
#include "runtime/apps/model_loading.h"
#include "runtime/core/status.h"
#include "runtime/core/sysinfo.h"
#include "runtime/engine/backend_factory.h"
#include "runtime/engine/cpu_model.h"
#include "runtime/engine/kv_cache.h"
#include "runtime/engine/model_grid.h"
#include "runtime/engine/synthetic_model.h"

namespace resa {
namespace {

struct Options {
  std::string model = "default";
  int tp = 1, sp = 1;
  std::vector<int> contexts = {4096, 16384};
  int steps = 16;
  int warmup = 2;
  float sparse_ratio = 0.1f;
  int min_blocks = 16;
  int rectify_every = 32;
  int layers = 0;  // synthetic models only: keep the first `layers` layers (0 = all)
  int threads = 0;
  double timeout_s = 300;
  std::string device = "cpu";  // cuda: each rank's CudaModel on the GPU of its local rank
};

// Where a collective's time goes, by group and element type (see comm_bench.h).
enum Phase { kSelection, kMerge, kTpAllReduce, kTpGather, kOther, kNumPhases };
constexpr const char* kPhaseNames[kNumPhases] = {"selection", "merge", "tp_allreduce",
                                                 "tp_gather", "other"};

struct PhaseTotals {
  double seconds = 0.0;
  int64_t calls = 0;
  int64_t ring_bytes = 0;     // sent by this rank under ring algorithms
  int64_t payload_bytes = 0;  // this rank's contribution (the message size)
};
using Phases = std::array<PhaseTotals, kNumPhases>;

Phase PhaseOf(bool sp_group, const CommKey& key) {
  if (sp_group) {
    if (key.op != CommOp::kAllGather) return kOther;
    return key.type == DataType::kInt32 ? kSelection : kMerge;
  }
  if (key.op == CommOp::kAllReduce) return kTpAllReduce;
  return key.op == CommOp::kAllGather ? kTpGather : kOther;
}

Phases Collect(CountingCommunicator* tp, CountingCommunicator* sp) {
  Phases out{};
  for (auto [comm, is_sp] : {std::pair{tp, false}, std::pair{sp, true}}) {
    if (comm == nullptr) continue;
    for (const auto& [key, s] : comm->counts()) {
      PhaseTotals& p = out[PhaseOf(is_sp, key)];
      p.seconds += s.seconds;
      p.calls += s.calls;
      p.ring_bytes += int64_t(s.ring_bytes);
      p.payload_bytes += int64_t(s.payload_bytes);
    }
  }
  return out;
}

void Reset(CountingCommunicator* tp, CountingCommunicator* sp) {
  if (tp != nullptr) tp->ResetCounts();
  if (sp != nullptr) sp->ResetCounts();
}

// Deterministic K/V of a token: uniform in [-1, 1), a function of (layer, position, model KV head,
// element), so every grid stores the same values for the heads and blocks it holds.
void TokenValues(int layer, int32_t pos, int kv_head, int d, float* k, float* v) {
  uint64_t x = (uint64_t(layer) << 44) ^ (uint64_t(pos) << 12) ^ uint64_t(kv_head);
  auto next = [&x] {
    x += 0x9E3779B97F4A7C15ull;
    uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return float(double((z ^ (z >> 31)) >> 40) / double(1ull << 23) - 1.0);
  };
  for (int i = 0; i < d; ++i) k[i] = next();
  for (int i = 0; i < d; ++i) v[i] = next();
}

// A context of `ctx` positions written straight into this rank's pages (its KV heads, its blocks),
// with the summaries the forward would have left.
absl::Status FillContext(const ModelConfig& cfg, const TpShard& ts, KvCache& cache,
                         SequenceKv& seq, int32_t ctx) {
  RESA_RETURN_IF_ERROR(cache.Reserve(seq, ctx));
  const int d = cfg.head_dim, hkv = ts.num_kv_heads;
  std::vector<float> k(size_t(hkv) * d), v(size_t(hkv) * d);
  for (int l = 0; l < cfg.num_layers; ++l) {
    const PagedKvLayer kv = cache.layer(l);
    for (int32_t pos = 0; pos < ctx; ++pos) {
      const int32_t block = pos / kPageTokens;
      if (!cache.shard().Owns(block)) continue;
      for (int h = 0; h < hkv; ++h) {
        TokenValues(l, pos, ts.kv_head_begin + h, d, k.data() + size_t(h) * d,
                    v.data() + size_t(h) * d);
      }
      WriteTokenKv(kv, cache.Page(seq, block), pos % kPageTokens, k.data(), v.data());
    }
  }
  seq.length = ctx;
  return absl::OkStatus();
}

struct ContextResult {
  double step_s = 0.0;     // mean decode step
  double rectify_s = 0.0;  // one rectification pass of f tokens
  Phases step{};           // per decode step (totals / steps)
  Phases rectify{};        // per rectification pass
  // Per phase: seconds per call of the same collective replayed back to back after a barrier
  // (ranks arrive together: transfer and library latency without waiting for late peers).
  std::array<double, kNumPhases> replay_s{};
};

// Replays `replays` collectives of phase p at the decode step's mean message size.
absl::StatusOr<double> Replay(Phase p, const PhaseTotals& t, CountingCommunicator* tp,
                              CountingCommunicator* sp, int replays) {
  CountingCommunicator* comm = p == kTpAllReduce ? tp : sp;
  if (t.calls == 0 || comm == nullptr || (p != kSelection && p != kMerge && p != kTpAllReduce)) {
    return 0.0;
  }
  const size_t count = size_t(t.payload_bytes / t.calls / 4);
  std::vector<int32_t> words(count), gathered(count * size_t(comm->size()));
  std::vector<float> floats(count), gathered_f(count * size_t(comm->size()));
  RESA_RETURN_IF_ERROR(comm->Barrier());
  Stopwatch sw;
  for (int i = 0; i < replays; ++i) {
    if (p == kSelection) {
      RESA_RETURN_IF_ERROR(comm->AllGather(std::span<const int32_t>(words),
                                           std::span<int32_t>(gathered)));
    } else if (p == kMerge) {
      RESA_RETURN_IF_ERROR(comm->AllGather(std::span<const float>(floats),
                                           std::span<float>(gathered_f)));
    } else {
      RESA_RETURN_IF_ERROR(comm->AllReduce(std::span<float>(floats)));
    }
  }
  return sw.Seconds() / replays;
}

absl::StatusOr<ContextResult> RunContext(const Options& o, const CpuWeights& weights,
                                         const ModelGrid& grid, int local_rank, int32_t ctx,
                                         CountingCommunicator* tp, CountingCommunicator* sp) {
  const ModelConfig& cfg = weights.config;
  const int f = o.rectify_every;
  const int32_t blocks = (ctx + o.warmup + o.steps + kPageTokens) / kPageTokens + 1;
  const int32_t pages = (blocks + grid.sp - 1) / grid.sp;
  std::unique_ptr<KvCache> cache;
  std::unique_ptr<CpuModel> cpu;
  std::unique_ptr<ModelBackend> model;
  SequenceKv seq;
  if (o.device == "cuda") {
    // The GPU ranks' collectives are staged through these host (MPI) groups, so the counters
    // see them; the context is the backend's synthetic fill.
    const int gpus = CudaDeviceCount();
    if (gpus < 1) return absl::FailedPreconditionError("--device cuda: no CUDA device visible");
    BackendOptions bo{.device = Device::kCuda, .kv_tokens = int64_t(pages) * kPageTokens};
    bo.cuda_device = local_rank % gpus;
    bo.tp_comm = grid.tp_comm.get();
    bo.sp_comm = grid.sp_comm.get();
    RESA_ASSIGN_OR_RETURN(Backend b, MakeBackend(weights, bo));
    model = std::move(b.model);
    RESA_RETURN_IF_ERROR(model->AdoptSyntheticContext(seq, ctx));
  } else {
    RESA_ASSIGN_OR_RETURN(cache, KvCache::Create(cfg, pages, grid.kv_shard()));
    RESA_ASSIGN_OR_RETURN(cpu, CpuModel::Create(weights, *cache, grid.groups()));
    model = std::make_unique<CpuBackend>(*cpu, *cache);
    RESA_RETURN_IF_ERROR(FillContext(cfg, grid.shard, *cache, seq, ctx));
  }
  const SparseAttention sparse{o.sparse_ratio, o.min_blocks};
  std::vector<float> logits(cfg.vocab_size);
  auto step = [&](int i) {
    const int32_t tok = int32_t((int64_t(i) * 7919 + 13) % cfg.vocab_size);
    ForwardChunk c{&seq, {&tok, 1}, LogitsMode::kLast, -1, &sparse};
    return model->Forward({&c, 1}, logits.data());
  };
  for (int i = 0; i < o.warmup; ++i) RESA_RETURN_IF_ERROR(step(i));
  Reset(tp, sp);
  ContextResult r;
  Stopwatch sw;
  for (int i = 0; i < o.steps; ++i) RESA_RETURN_IF_ERROR(step(o.warmup + i));
  r.step_s = sw.Seconds() / o.steps;
  r.step = Collect(tp, sp);
  for (PhaseTotals& p : r.step) {
    p.seconds /= o.steps;
    p.calls /= o.steps;
    p.ring_bytes /= o.steps;
    p.payload_bytes /= o.steps;
  }
  for (int p = 0; p < kNumPhases; ++p) {
    RESA_ASSIGN_OR_RETURN(r.replay_s[size_t(p)], Replay(Phase(p), r.step[size_t(p)], tp, sp, 200));
  }
  // One rectification pass: the last f positions again as a dense causal chunk.
  if (f > 0 && f <= seq.length) {
    std::vector<int32_t> tokens(static_cast<size_t>(f));
    for (int i = 0; i < f; ++i) tokens[size_t(i)] = int32_t((i * 131 + 7) % cfg.vocab_size);
    Reset(tp, sp);
    sw.Reset();
    ForwardChunk c{&seq, tokens, LogitsMode::kNone, seq.length - f, nullptr};
    RESA_RETURN_IF_ERROR(model->Forward({&c, 1}, nullptr));
    r.rectify_s = sw.Seconds();
    r.rectify = Collect(tp, sp);
  }
  return r;
}

absl::StatusOr<std::unique_ptr<WeightSource>> OpenSource(const Options& o) {
  if (absl::StartsWith(o.model, "synthetic:")) {
    RESA_ASSIGN_OR_RETURN(ModelConfig cfg, SyntheticConfig(o.model.substr(10)));
    if (o.layers > 0) cfg.num_layers = std::min(cfg.num_layers, o.layers);
    return MakeSyntheticWeights(cfg, 1);
  }
  if (o.layers > 0) {
    return absl::InvalidArgumentError("--layers applies to synthetic:<shape> models only");
  }
  RESA_ASSIGN_OR_RETURN(std::string path, ResolveModelPath(o.model));
  return OpenWeightSource(path);
}

int Fail(int rank, const absl::Status& st) {
  std::fprintf(stderr, "resa-bench comm: rank %d: error: %s\n", rank,
               std::string(st.message()).c_str());
  return 1;
}

int Run(const Options& o) {
  WorldOptions wo;
  wo.comm.timeout = absl::Seconds(o.timeout_s);
  auto created = CreateWorld(wo);
  if (!created.ok()) return Fail(-1, created.status());
  std::unique_ptr<CountingCommunicator> world = CountingCommunicator::Wrap(std::move(created->host));
  const int rank = world->rank();
  const int created_local_rank = created->local_rank;
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const int threads = ConfigureThreads(
      o.threads > 0 ? o.threads : std::max(1, int(cores) / std::max(1, created->local_size)));

  // Every rank opens the same model and validates the same grid, so errors are the same on all
  // ranks and no rank walks into a collective alone.
  auto source = OpenSource(o);
  if (!source.ok()) return Fail(rank, source.status());
  const ModelConfig& cfg = (*source)->config();
  auto grid = CreateModelGrid(*world, o.tp, o.sp, cfg);
  if (!grid.ok()) return Fail(rank, grid.status());
  auto weights = LoadCpuWeights(**source, grid->shard);
  if (!weights.ok()) return Fail(rank, weights.status());
  // The embedding is replicated on every rank: if checksums differ, the ranks run different
  // weights (e.g. a weight source whose values depend on the process) and the selections, hence
  // the selection exchange's fallback rate, are not those of one model.
  bool consistent = true;
  {
    double sum = 0.0;
    const FloatBuffer& e = (*weights)->embed;
    for (size_t i = 0; i < e.size(); i += 97) sum += double(e.data()[i]) * double(i % 7 + 1);
    const float mine = float(sum);
    std::vector<float> all(size_t(world->size()));
    if (absl::Status st = world->AllGather(std::span<const float>(&mine, 1), std::span<float>(all));
        !st.ok()) {
      return Fail(rank, st);
    }
    for (float x : all) consistent = consistent && x == all[0];
    if (!consistent && rank == 0) {
      std::fprintf(stderr,
                   "resa-bench comm: warning: the ranks' weights differ (embedding checksums); "
                   "selections are not one model's and may need the second exchange\n");
    }
  }
  auto* tp = dynamic_cast<CountingCommunicator*>(grid->tp_comm.get());
  auto* sp = dynamic_cast<CountingCommunicator*>(grid->sp_comm.get());
  const int layers = cfg.num_layers;

  std::vector<std::string> table;
  for (int ctx : o.contexts) {
    auto r = RunContext(o, **weights, *grid, created_local_rank, ctx, tp, sp);
    if (!r.ok()) return Fail(rank, r.status());
    // Per rank: times as floats, counts and bytes as int64; rank 0 reduces.
    std::vector<float> mine_t = {float(r->step_s), float(r->rectify_s)};
    for (double x : r->replay_s) mine_t.push_back(float(x));
    std::vector<int64_t> mine_b;
    for (const Phases* ph : {&r->step, &r->rectify}) {
      for (const PhaseTotals& p : *ph) {
        mine_t.push_back(float(p.seconds));
        mine_b.insert(mine_b.end(), {p.calls, p.ring_bytes, p.payload_bytes});
      }
    }
    const int n = world->size();
    std::vector<float> all_t(mine_t.size() * size_t(n));
    std::vector<int64_t> all_b(mine_b.size() * size_t(n));
    absl::Status st = world->AllGather(std::span<const float>(mine_t), std::span<float>(all_t));
    if (st.ok()) {
      st = world->AllGather(std::span<const int64_t>(mine_b), std::span<int64_t>(all_b));
    }
    if (!st.ok()) return Fail(rank, st);
    if (rank != 0) continue;
    auto mean_t = [&](size_t i) {
      double s = 0.0;
      for (int q = 0; q < n; ++q) s += all_t[size_t(q) * mine_t.size() + i];
      return s / n;
    };
    auto max_t = [&](size_t i) {
      double m = 0.0;
      for (int q = 0; q < n; ++q) m = std::max(m, double(all_t[size_t(q) * mine_t.size() + i]));
      return m;
    };
    auto max_b = [&](size_t i) {
      int64_t m = 0;
      for (int q = 0; q < n; ++q) m = std::max(m, all_b[size_t(q) * mine_b.size() + i]);
      return m;
    };
    // Index helpers: phase p of the decode step (block 0) or of the rectification (block 1).
    auto replay_at = [](int p) { return size_t(2 + p); };
    auto t_at = [](int block, int p) { return size_t(2 + kNumPhases + block * kNumPhases + p); };
    auto b_at = [](int block, int p, int field) {
      return size_t((block * kNumPhases + p) * 3 + field);
    };
    const double step = mean_t(0);
    double comm = 0.0, rect_comm = 0.0, comm_floor = 0.0;
    int64_t bytes = 0, rect_bytes = 0;
    for (int p = 0; p < kNumPhases; ++p) {
      comm_floor += double(max_b(b_at(0, p, 0))) * mean_t(replay_at(p));
      comm += mean_t(t_at(0, p));
      rect_comm += mean_t(t_at(1, p));
      bytes += max_b(b_at(0, p, 1));
      rect_bytes += max_b(b_at(1, p, 1));
    }
    // Blocks the first timed step sees (its token at position ctx + warmup).
    const int32_t m = (ctx + o.warmup + kPageTokens) / kPageTokens;
    const int32_t sel = NumSelectedBlocks(m, o.sparse_ratio, o.min_blocks);
    std::string json = absl::StrFormat(
        "{\"bench\":\"comm\",\"model\":\"%s\",\"device\":\"%s\",\"ranks\":%d,\"tp\":%d,\"sp\":%d,\"context\":%d,"
        "\"layers\":%d,\"blocks\":%d,\"selected\":%d,\"threads\":%d,\"steps\":%d,"
        "\"step_ms\":%.3f,\"step_ms_max\":%.3f,\"comm_ms\":%.3f,\"comm_share\":%.4f,"
        "\"comm_floor_ms\":%.3f,\"comm_floor_share\":%.4f,\"bytes_per_rank\":%d,"
        "\"weights_consistent\":%s",
        cfg.model_name, o.device, n, o.tp, o.sp, ctx, layers, m, sel, threads, o.steps, step * 1e3,
        max_t(0) * 1e3, comm * 1e3, step > 0 ? comm / step : 0.0, comm_floor * 1e3,
        step > 0 ? comm_floor / step : 0.0, bytes, consistent ? "true" : "false");
    for (int p = 0; p < kNumPhases; ++p) {
      const int64_t calls = max_b(b_at(0, p, 0));
      absl::StrAppendFormat(&json,
                            ",\"%s_ms\":%.4f,\"%s_calls\":%d,\"%s_bytes\":%d,\"%s_msg_bytes\":%d,"
                            "\"%s_replay_us\":%.2f",
                            kPhaseNames[p], mean_t(t_at(0, p)) * 1e3, kPhaseNames[p], calls,
                            kPhaseNames[p], max_b(b_at(0, p, 1)), kPhaseNames[p],
                            calls > 0 ? max_b(b_at(0, p, 2)) / calls : 0, kPhaseNames[p],
                            mean_t(replay_at(p)) * 1e6);
    }
    absl::StrAppendFormat(&json,
                          ",\"rectify_tokens\":%d,\"rectify_ms\":%.3f,\"rectify_comm_ms\":%.3f,"
                          "\"rectify_bytes_per_rank\":%d}",
                          o.rectify_every, mean_t(1) * 1e3, rect_comm * 1e3, rect_bytes);
    std::printf("%s\n", json.c_str());
    std::fflush(stdout);
    table.push_back(absl::StrFormat(
        "| %5d | %2d x %-2d | %6d | %4d | %8.2f | %7.3f | %7.3f | %7.3f | %5.1f%% | %5.1f%% | "
        "%9d | %9d | %9d | %8.1f |",
        n, o.tp, o.sp, ctx, sel, step * 1e3, mean_t(t_at(0, kSelection)) * 1e3,
        mean_t(t_at(0, kMerge)) * 1e3, mean_t(t_at(0, kTpAllReduce)) * 1e3,
        step > 0 ? 100.0 * comm / step : 0.0, step > 0 ? 100.0 * comm_floor / step : 0.0,
        max_b(b_at(0, kSelection, 1)),
        max_b(b_at(0, kMerge, 1)), max_b(b_at(0, kTpAllReduce, 1)), bytes / 1e3));
  }
  if (rank == 0) {
    std::fprintf(stderr,
                 "\nmodel %s (%d layers), %d threads per rank, %d decode steps per context; times "
                 "are rank means per decode step (comm: inside the collectives, waiting for peers "
                 "included; floor: calls x replayed latency), bytes are sent per rank per step "
                 "(ring)\n"
                 "| ranks | tp x sp |    ctx |    n |  step ms |  sel ms | mrg ms  | TP AR ms | "
                 "comm  | floor  |   sel B   |  merge B  |  TP AR B  | total KB |\n"
                 "|------:|:-------:|-------:|-----:|---------:|--------:|--------:|--------:|"
                 "------:|-------:|----------:|----------:|----------:|---------:|\n",
                 cfg.model_name.c_str(), layers, threads, o.steps);
    for (const std::string& row : table) std::fprintf(stderr, "%s\n", row.c_str());
  }
  return 0;
}

}  // namespace

void AddCommBenchCommand(CLI::App& app, int& exit_code) {
  static Options o;
  CLI::App* cmd = app.add_subcommand(
      "comm", "Distributed decode step: time and bytes of selection exchange, LSE merge and TP "
              "all-reduces (run under mpirun -np tp*sp)");
  cmd->add_option("-m,--model", o.model, "Model (file, alias, synthetic:<shape>)")
      ->capture_default_str();
  cmd->add_option("--tp", o.tp, "Tensor-parallel ranks")->capture_default_str();
  cmd->add_option("--sp", o.sp, "Sequence-parallel ranks")->capture_default_str();
  cmd->add_option("-c,--contexts,--ctx", o.contexts, "Context lengths")
      ->capture_default_str()
      ->delimiter(',');
  cmd->add_option("--steps", o.steps, "Timed decode steps per context")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  cmd->add_option("--warmup", o.warmup, "Untimed decode steps first")
      ->capture_default_str()
      ->check(CLI::Range(0, 1000));
  cmd->add_option("--sparse-ratio", o.sparse_ratio, "Kept fraction of blocks")
      ->capture_default_str();
  cmd->add_option("--min-blocks", o.min_blocks, "n_min")->capture_default_str();
  cmd->add_option("--rectify-every", o.rectify_every, "f: tokens of the timed rectification pass")
      ->capture_default_str()
      ->check(CLI::Range(0, 4096));
  cmd->add_option("--layers", o.layers, "Synthetic models: keep only the first N layers")
      ->capture_default_str();
  cmd->add_option("-t,--threads", o.threads,
                  "CPU threads per rank; 0 = the host's cores divided among its ranks")
      ->capture_default_str();
  cmd->add_option("--timeout", o.timeout_s, "Seconds a collective may wait")->capture_default_str();
  cmd->add_option("--device", o.device,
                  "cpu, or cuda: every rank's model on the GPU of its local rank, collectives "
                  "staged through MPI (ranks may share a GPU; times then include the sharing)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  cmd->callback([&exit_code] { exit_code = Run(o); });
}

}  // namespace resa
