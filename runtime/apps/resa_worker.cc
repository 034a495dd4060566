// `resa-worker`: one rank of a TP x SP generation job (DESIGN.md §5), started by mpirun:
//
//   mpirun -np 4 build/bin/resa-worker --model default --tp 2 --sp 2 --prompt "..."
//
// Every rank loads its TP shard of the weights and holds its SP share of the KV cache; all ranks
// run the same forward steps; rank 0 samples each token and broadcasts it, streams the text and
// prints the stats. Errors of one rank end the job on every rank (an agreement after each local
// phase; a lost peer surfaces as a communicator error within --timeout). With --device cuda each
// rank runs its shard on a GPU of its host (local rank modulo the visible devices); the model's
// collectives go over NCCL when every rank of a host has its own GPU, otherwise (ranks sharing a
// GPU) over MPI through pinned host memory (--gpu-comm).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "parallel/communicator_factory.h"
#include "runtime/apps/generate_command.h"
#include "runtime/apps/model_loading.h"
#include "runtime/apps/process_setup.h"
#include "runtime/core/status.h"
#include "runtime/core/sysinfo.h"
#include "runtime/engine/backend_factory.h"
#include "runtime/engine/generate.h"
#include "runtime/engine/model_grid.h"
#include "runtime/engine/synthetic_model.h"
#include "runtime/model/gguf.h"
#if RESA_HAVE_GRPC
#include "runtime/serving/server.h"
#include "runtime/serving/support/logging.h"
#include "runtime/serving/worker_link.h"
#endif

namespace resa {
namespace {

struct WorkerOptions {
  GenerateCommandOptions gen;  // model, prompt, sampling, context, threads, ReSA: as resa generate
  int tp = 1, sp = 1;
  double timeout_s = 60;
  std::string tokens_out, selections_out;
  std::string coordinator;  // serve plans from a coordinator instead of one prompt
  std::string gpu_comm = "auto";  // --device cuda: nccl, mpi or auto
#if RESA_HAVE_GRPC
  serving::WorkerGroupOptions group;
  serving::ClientSecurityOptions security;
  std::string log_format = "text", log_level = "info";
#endif
};

// Errors go to stderr prefixed with the rank; `everywhere` errors (the same on every rank, such
// as a bad grid) are printed by rank 0 only.
int Fail(int rank, const absl::Status& st, bool everywhere = false) {
  if (!everywhere || rank == 0) {
    std::fprintf(stderr, "resa-worker: rank %d on %s: error: %s\n", rank, HostName().c_str(),
                 std::string(st.message()).c_str());
  }
  return 1;
}

// Every rank reports whether its local phase succeeded and all reach the same verdict (naming the
// lowest failing rank), so no rank walks into a collective its peers will never join.
absl::Status Agree(Communicator& world, const absl::Status& mine, std::string_view phase) {
  int32_t worst = mine.ok() ? 0 : world.size() - world.rank();
  RESA_RETURN_IF_ERROR(world.AllReduce(std::span<int32_t>(&worst, 1), ReduceOp::kMax));
  if (worst == 0) return absl::OkStatus();
  if (!mine.ok()) return mine;
  return absl::AbortedError(
      absl::StrCat(AsAbsl(phase), " failed on rank ", world.size() - worst, " (see its message)"));
}

// The rank's share of the job: what each local phase produces.
struct Rank {
  std::unique_ptr<WeightSource> source;
  std::unique_ptr<Tokenizer> tokenizer;
  std::vector<int32_t> prompt;
};

absl::Status OpenModel(const WorkerOptions& o, Rank& r) {
  if (absl::StartsWith(o.gen.model, "synthetic:")) {
    return absl::InvalidArgumentError("resa-worker needs a model with a tokenizer");
  }
  std::string text;  // a standalone worker's prompt, read before the model opens
  if (o.coordinator.empty()) {
    RESA_ASSIGN_OR_RETURN(text, ReadPrompt(o.gen));
  }
  RESA_ASSIGN_OR_RETURN(std::string path, ResolveModelPath(o.gen.model));
  RESA_ASSIGN_OR_RETURN(r.source, OpenWeightSource(path));
  RESA_ASSIGN_OR_RETURN(r.tokenizer, LoadTokenizer(*r.source));
  if (o.coordinator.empty()) {
    RESA_ASSIGN_OR_RETURN(r.prompt, PromptIds(o.gen, text, *r.tokenizer));
  }
  return absl::OkStatus();
}

// Every rank tokenizes the same prompt; rank 0's ids are broadcast all the same, so the ranks
// feed identical tokens even if a tokenizer ever behaved differently on one host.
absl::Status SharePrompt(Communicator& world, std::vector<int32_t>& ids) {
  int32_t n = int32_t(ids.size());
  RESA_RETURN_IF_ERROR(world.Broadcast(std::span<int32_t>(&n, 1), 0));
  ids.resize(n);
  return world.Broadcast(std::span<int32_t>(ids), 0);
}

int RunWorker(const WorkerOptions& o) {
  WorldOptions wo;
  wo.comm.timeout = absl::Seconds(o.timeout_s);
  auto created = CreateWorld(wo);
  if (!created.ok()) return Fail(-1, created.status());
  World world = std::move(*created);
  Communicator& w = *world.host;
  const int rank = w.rank();
  const int tp = std::max(1, o.tp);
  std::printf("[resa-worker] rank %d/%d local rank %d/%d host %s tp rank %d/%d sp rank %d/%d\n",
              rank, w.size(), world.local_rank, world.local_size, HostName().c_str(), rank % tp,
              o.tp, rank / tp, o.sp);
  std::fflush(stdout);

  // Threads: by default the host's cores shared among the ranks on it.
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const int threads = ConfigureThreads(
      o.gen.threads > 0 ? o.gen.threads : std::max(1, int(cores) / world.local_size));

  Rank r;
  SamplingParams sampling{o.gen.temperature, o.gen.top_k, o.gen.top_p, o.gen.seed};
  absl::Status st = sampling.Validate();
  auto mode = ParseDecodeMode(o.gen.mode);
  const ResaOptions resa{mode.ok() ? *mode : DecodeMode::kDense, o.gen.sparse_ratio,
                         o.gen.min_blocks, o.gen.rectify_every};
  if (st.ok()) st = mode.status();
  if (st.ok()) st = resa.Validate();
  auto device = ParseDevice(o.gen.device);
  if (st.ok()) st = device.status();
  // GPU ranks: the device of the local rank; NCCL needs one GPU per rank of a host.
  const int gpus = CudaDeviceCount();
  bool use_nccl = false;
  if (st.ok() && *device == Device::kCuda) {
    if (gpus < 1) {
      st = absl::FailedPreconditionError("--device cuda: no CUDA device visible on this host");
    } else if (o.gpu_comm == "nccl" && (!HaveNcclBackend() || world.local_size > gpus)) {
      st = absl::InvalidArgumentError(absl::StrCat(
          "--gpu-comm nccl needs a build with NCCL and one GPU per rank: ", world.local_size,
          " ranks on ", HostName(), " share ", gpus, " GPU(s); use --gpu-comm mpi"));
    } else {
      use_nccl = w.size() > 1 && o.gpu_comm != "mpi" && HaveNcclBackend() &&
                 world.local_size <= gpus;
    }
  }
  if (st.ok()) st = OpenModel(o, r);
#if RESA_HAVE_GRPC
  // Before the weights load: a wrong coordinator address fails in seconds, on every rank.
  if (st.ok() && rank == 0 && !o.coordinator.empty()) {
    serving::WorkerLinkOptions probe;
    probe.coordinator = o.coordinator;
    probe.security = o.security;
    probe.connect_timeout = absl::Seconds(o.group.connect_timeout_s);
    st = serving::ProbeCoordinator(probe);
  }
#endif
  if (absl::Status a = Agree(w, st, "opening the model"); !a.ok()) return Fail(rank, a, st.ok());
  if (o.coordinator.empty()) {
    if (absl::Status a = SharePrompt(w, r.prompt); !a.ok()) return Fail(rank, a);
  }
  const ModelConfig& cfg = r.source->config();

  // Grid errors are the same on every rank: they fail here, before any collective.
  auto grid = CreateModelGrid(w, o.tp, o.sp, cfg);
  if (!grid.ok()) return Fail(rank, grid.status(), true);

  // GPU ranks over NCCL when every rank can (one GPU per rank on each host), the same groups
  // on device buffers; otherwise the model stages its collectives through the MPI groups.
  std::unique_ptr<Communicator> nccl_world;
  ModelGrid device_grid;
  {
    int32_t cannot = use_nccl ? 0 : 1;
    absl::Status nst = w.AllReduce(std::span<int32_t>(&cannot, 1), ReduceOp::kMax);
    if (nst.ok() && cannot == 0) {
      auto nccl = CreateNcclCommunicator(
          w, world.local_rank % gpus, CommunicatorOptions{.timeout = w.timeout(), .name = "nccl"});
      nst = nccl.status();
      if (nst.ok()) nccl_world = std::move(*nccl);
      if (nst.ok()) {
        auto g = CreateModelGrid(*nccl_world, o.tp, o.sp, cfg);
        nst = g.status();
        if (nst.ok()) device_grid = std::move(*g);
      }
    }
    if (absl::Status a = Agree(w, nst, "creating the NCCL groups"); !a.ok()) {
      return Fail(rank, a, nst.ok());
    }
  }
  const bool on_nccl = nccl_world != nullptr;

  // Weights: peers wait for the slowest loader, so the timeout is relaxed for this phase.
  Stopwatch load_sw;
  std::unique_ptr<CpuWeights> weights;
  std::unique_ptr<KvCache> cache;
  std::unique_ptr<CpuModel> model;
  std::unique_ptr<ModelBackend> backend;  // the CpuModel's, or the GPU's
  std::string placement = "cpu";
  {
    ProgressBar bar("loading " + std::filesystem::path(r.source->path()).filename().string());
    ProgressFn fn;
    if (!o.gen.quiet && rank == 0) fn = bar.AsCallback();
    auto loaded = LoadCpuWeights(*r.source, grid->shard, fn);
    if (!o.gen.quiet && rank == 0) bar.Finish();
    st = loaded.status();
    if (st.ok()) weights = std::move(*loaded);
    // Pages per rank: the context's blocks divided among the SP ranks (a coordinator's worker:
    // the pool for --max-batch sequences or --kv-tokens).
    const int32_t blocks = (o.gen.ctx + kPageTokens - 1) / kPageTokens;
    int32_t pages = (blocks + o.sp - 1) / o.sp;
#if RESA_HAVE_GRPC
    if (!o.coordinator.empty()) pages = serving::KvPagesPerRank(o.group, o.sp);
#endif
    if (st.ok() && *device == Device::kCuda) {
      BackendOptions bo{.device = Device::kCuda, .kv_tokens = int64_t(pages) * kPageTokens};
      bo.cuda_device = world.local_rank % gpus;
      bo.tp_comm = (on_nccl ? device_grid : *grid).tp_comm.get();
      bo.sp_comm = (on_nccl ? device_grid : *grid).sp_comm.get();
      bo.sp_host_comm = grid->sp_comm.get();
      auto b = MakeBackend(*weights, bo);
      st = b.status();
      if (st.ok()) {
        backend = std::move(b->model);
        placement = b->description;
      }
    } else if (st.ok()) {
      auto c = KvCache::Create(cfg, pages, grid->kv_shard());
      st = c.status();
      if (st.ok()) cache = std::move(*c);
      if (st.ok()) {
        auto m = CpuModel::Create(*weights, *cache, grid->groups());
        st = m.status();
        if (st.ok()) model = std::move(*m);
      }
      if (st.ok()) backend = std::make_unique<CpuBackend>(*model, *cache);
    }
  }
  w.set_timeout(absl::Seconds(std::max(o.timeout_s, 600.0)));
  absl::Status agreed = Agree(w, st, "loading the weights");
  w.set_timeout(absl::Seconds(o.timeout_s));
  if (!agreed.ok()) return Fail(rank, agreed, st.ok());
  if (!o.gen.quiet) {
    std::fprintf(stderr, "[resa-worker] rank %d: %s, %.0f MB of weights, loaded in %.1fs, %s\n",
                 rank, grid->ToString().c_str(), weights->TotalBytes() / 1e6, load_sw.Seconds(),
                 placement.c_str());
  }

  if (!o.coordinator.empty()) {
#if RESA_HAVE_GRPC
    // Plans from the coordinator; every rank runs them, rank 0 holds the stream.
    serving::WorkerSession session(*backend, r.tokenizer->StopIds(), o.gen.ctx, &w);
    serving::WorkerLinkOptions link;
    link.coordinator = o.coordinator;
    link.security = o.security;
    link.connect_timeout = absl::Seconds(o.group.connect_timeout_s);
    const v1::WorkerRegister reg = serving::MakeRegistration(
        o.gen.model, cfg, *r.tokenizer, o.group, w.size(), o.tp, o.sp, backend->num_pages());
    absl::Status served = serving::RunWorkerLink(link, reg, session, &w);
    if (!served.ok()) return Fail(rank, served);
    return 0;
#endif
  }

  // Selections (debug): per layer and KV head, the n-th selection's blocks, written by the SP
  // rank 0 of each TP rank (its SP peers hold identical selections). Sorted files of all TP
  // ranks concatenated compare equal across grids.
  std::map<std::tuple<int, int, int>, std::vector<int32_t>> selections;
  std::map<std::pair<int, int>, int> seen;
  const bool dump_selections = !o.selections_out.empty() && grid->sp_rank == 0;
  if (dump_selections) {
    backend->set_selection_trace([&](int layer, int kvh, int64_t, std::span<const int32_t> b) {
      selections[{layer, kvh, seen[{layer, kvh}]++}] = std::vector<int32_t>(b.begin(), b.end());
    });
  }

  GenerateOptions go;
  go.max_new_tokens = o.gen.max_new_tokens;
  go.prefill_chunk = o.gen.prefill_chunk;
  go.sampling = sampling;
  go.stop_ids = r.tokenizer->StopIds();
  go.resa = resa;
  go.agree = &w;
  StreamDecoder stream(*r.tokenizer);
  std::vector<int32_t> generated;
  auto stats = Generate(*backend, r.prompt, go, [&](int32_t t) {
    generated.push_back(t);
    if (rank == 0) {
      const std::string piece = stream.Push(t);
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    }
    return true;
  });
  if (rank == 0) {
    const std::string rest = stream.Flush();
    std::fwrite(rest.data(), 1, rest.size(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
  }
  if (!stats.ok()) return Fail(rank, stats.status());

  if (rank == 0 && !o.tokens_out.empty()) {
    std::ofstream out(o.tokens_out);
    out << absl::StrJoin(generated, " ") << "\n";
    if (!out) return Fail(rank, absl::InternalError("cannot write --tokens-out " + o.tokens_out));
  }
  if (dump_selections) {
    const std::string path = absl::StrCat(o.selections_out, ".tp", grid->tp_rank);
    std::ofstream out(path);
    for (const auto& [key, blocks] : selections) {
      out << "layer " << std::get<0>(key) << " kv " << std::get<1>(key) << " #" << std::get<2>(key)
          << ": " << absl::StrJoin(blocks, " ") << "\n";
    }
    if (!out) return Fail(rank, absl::InternalError("cannot write " + path));
  }
  if (rank == 0 && !o.gen.quiet) {
    std::fprintf(stderr,
                 "[stats] %d ranks (tp %d x sp %d) | prompt %d tokens | prefill %.1f tok/s | "
                 "decode %.1f tok/s (%d tokens) | peak memory %.0f MiB on rank 0 | %d threads per "
                 "rank%s\n",
                 w.size(), o.tp, o.sp, stats->prompt_tokens, stats->prefill_tokens_per_second(),
                 stats->decode_tokens_per_second(), stats->generated_tokens,
                 PeakRssBytes() / 1048576.0, threads,
                 stats->stopped_by_context ? " | stopped: context full (raise --ctx)" : "");
    if (resa.mode != DecodeMode::kDense) {
      const SequenceReport& rep = stats->report;
      std::fprintf(stderr,
                   "[%s] blocks read %lld of %lld (%.1f%%) | sparse steps %d of %d | "
                   "rectifications %d (%d tokens) | time on rank 0: %s\n",
                   DecodeModeName(resa.mode), static_cast<long long>(rep.blocks_read),
                   static_cast<long long>(rep.blocks_total),
                   rep.blocks_total > 0 ? 100.0 * rep.blocks_read / rep.blocks_total : 0.0,
                   rep.sparse_steps, rep.decode_steps, rep.rectifications, rep.rectified_tokens,
                   DecodeTimeSplit(*stats).c_str());
    }
  }
  return 0;
}

}  // namespace
}  // namespace resa

int main(int argc, char** argv) {
  resa::DefaultOpenMpWaitPolicy(argv);
  resa::WorkerOptions o;
  CLI::App app{
      "resa-worker: one rank of a tensor x sequence parallel generation job "
      "(mpirun -np TP*SP resa-worker --tp TP --sp SP ...)"};
  resa::AddGenerationFlags(app, o.gen);
  app.get_option("--threads")
      ->description("CPU threads per rank; 0 = the host's cores divided among its ranks");
  app.get_option("--seed")->description("Sampling seed (rank 0 samples)");
  app.add_option("--tp", o.tp, "Tensor-parallel ranks (split heads and the MLP)")
      ->capture_default_str();
  app.add_option("--sp", o.sp, "Sequence-parallel ranks (split the KV cache by pages)")
      ->capture_default_str();
  app.add_option("--timeout", o.timeout_s,
                 "Seconds a collective may wait for its peers before the job fails")
      ->capture_default_str()
      ->check(CLI::Range(1.0, 86400.0));
  app.add_option("--gpu-comm", o.gpu_comm,
                 "With --device cuda and several ranks: how the model's collectives travel. nccl "
                 "(one GPU per rank of a host), mpi (through pinned host memory; ranks may share "
                 "a GPU), auto (nccl when every rank has its own GPU)")
      ->check(CLI::IsMember({"auto", "nccl", "mpi"}))
      ->capture_default_str();
  app.add_option("--tokens-out", o.tokens_out, "Rank 0 writes the generated token ids here");
  app.add_option("--coordinator", o.coordinator,
                 "HOST:PORT of a resa-coordinator: serve its jobs instead of one --prompt "
                 "(rank 0 connects; the other ranks receive each plan from it)");
#if RESA_HAVE_GRPC
  o.group.ctx = -1;  // --ctx is the generation flag's
  resa::serving::AddWorkerGroupFlags(app, o.group, /*with_ctx=*/false);
  resa::serving::AddClientSecurityFlags(app, o.security);
  resa::serving::AddLoggingFlags(app, o.log_format, o.log_level);
#endif
  app.add_option("--selections-out", o.selections_out,
                 "Debug: write every sparse selection to PREFIX.tp<rank> (SP rank 0 of each TP "
                 "rank)");
  CLI11_PARSE(app, argc, argv);
  if (!o.coordinator.empty()) {
#if RESA_HAVE_GRPC
    o.group.ctx = o.gen.ctx;
    absl::Status st = resa::serving::ValidateWorkerGroup(o.group);
    if (st.ok()) st = resa::serving::SetupLogging(o.log_format, o.log_level);
    if (!st.ok()) return resa::Fail(-1, st);
#else
    return resa::Fail(-1, absl::UnimplementedError(
                              "--coordinator needs a build with gRPC (RESA_GRPC=ON; see README)"));
#endif
  }
  return resa::RunWorker(o);
}
