// Kernel boundaries against grid barriers (sync_probe.h).
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/sync_probe.h"

// Returns the status of expr when it is not OK.
#define SYNC_PROBE_TRY(expr)                    \
  do {                                          \
    if (absl::Status st_ = (expr); !st_.ok()) { \
      return st_;                               \
    }                                           \
  } while (0)

namespace resa::cuda {
namespace {

// One phase, block b: out[b] = in[(b + 1) % blocks] + 1, read after the previous kernel (PDL).
__global__ void ChainPhaseKernel(const int32_t* in, int32_t* out, int blocks) {
  detail::AwaitPreviousKernel();
  if (threadIdx.x == 0) out[blockIdx.x] = __ldcg(in + (blockIdx.x + 1) % blocks) + 1;
}

constexpr int kProbeCluster = 8;

__device__ __forceinline__ unsigned LoadAcquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// GridBarrierKind::kGeneration. bar[0] = count, bar[1] = generation.
__device__ __forceinline__ void GenerationBarrier(unsigned* bar, unsigned blocks) {
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned gen = LoadAcquire(bar + 1);
    __threadfence();
    if (atomicAdd(bar, 1u) == blocks - 1) {
      bar[0] = 0;
      asm volatile("st.release.gpu.u32 [%0], %1;" ::"l"(bar + 1), "r"(gen + 1) : "memory");
    } else {
      while (LoadAcquire(bar + 1) == gen) {
      }
    }
  }
  __syncthreads();
}

// GridBarrierKind::kCounter (and the global part of kCluster): arrive, then wait for target.
__device__ __forceinline__ void CounterArriveWait(unsigned* counter, unsigned target) {
  asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(counter) : "memory");
  while (LoadAcquire(counter) < target) {
  }
}

template <GridBarrierKind KIND>
__device__ __forceinline__ void Barrier(unsigned* bar, unsigned blocks, unsigned phase) {
  if constexpr (KIND == GridBarrierKind::kGeneration) {
    GenerationBarrier(bar, blocks);
  } else if constexpr (KIND == GridBarrierKind::kCounter) {
    __syncthreads();
    if (threadIdx.x == 0) CounterArriveWait(bar, (phase + 1) * blocks);
    __syncthreads();
  } else {
    // Every CTA of the cluster has written its phase (release), then the cluster's first CTA
    // meets the other clusters, then the cluster waits for it (acquire).
    asm volatile(
        "barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::
            : "memory");
    unsigned rank;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
    if (rank == 0 && threadIdx.x == 0) {
      CounterArriveWait(bar, (phase + 1) * (blocks / kProbeCluster));
    }
    asm volatile(
        "barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::
            : "memory");
  }
}

// Every phase in one kernel (all blocks resident), buffers a and b in turn.
template <GridBarrierKind KIND>
__global__ void BarrierPhasesKernel(int32_t* a, int32_t* b, int blocks, int phases, unsigned* bar) {
  for (int p = 0; p < phases; ++p) {
    const int32_t* in = (p % 2 == 0) ? a : b;
    int32_t* out = (p % 2 == 0) ? b : a;
    if (threadIdx.x == 0) out[blockIdx.x] = __ldcg(in + (blockIdx.x + 1) % blocks) + 1;
    Barrier<KIND>(bar, unsigned(blocks), unsigned(p));
  }
}

// The cooperative launch of the kind's kernel (clusters of kProbeCluster for kCluster).
template <GridBarrierKind KIND>
struct BarrierLaunch {
  cudaLaunchAttribute attr[2];
  cudaLaunchConfig_t cfg = {};
  BarrierLaunch(int blocks, int threads, cudaStream_t stream) {
    attr[0].id = cudaLaunchAttributeCooperative;
    attr[0].val.cooperative = 1;
    attr[1].id = cudaLaunchAttributeClusterDimension;
    attr[1].val.clusterDim.x = kProbeCluster;
    attr[1].val.clusterDim.y = 1;
    attr[1].val.clusterDim.z = 1;
    cfg.gridDim = dim3(unsigned(blocks));
    cfg.blockDim = dim3(unsigned(threads));
    cfg.stream = stream;
    cfg.attrs = attr;
    cfg.numAttrs = KIND == GridBarrierKind::kCluster ? 2 : 1;
  }
  BarrierLaunch(const BarrierLaunch&) = delete;

  // Whether every block can be resident at once (else the barrier would never open).
  cudaError_t Fits(bool* fits) const {
    *fits = false;
    int resident = 0;
    if constexpr (KIND == GridBarrierKind::kCluster) {
      if (cfg.gridDim.x % kProbeCluster != 0) return cudaSuccess;
      cudaLaunchAttribute shape = attr[1];  // the cluster shape alone
      cudaLaunchConfig_t q = cfg;
      q.attrs = &shape;
      q.numAttrs = 1;
      const cudaError_t err =
          cudaOccupancyMaxActiveClusters(&resident, BarrierPhasesKernel<KIND>, &q);
      if (err != cudaSuccess) return err;
      resident *= kProbeCluster;
    } else {
      int per_sm = 0;
      const cudaError_t err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
          &per_sm, BarrierPhasesKernel<KIND>, int(cfg.blockDim.x), 0);
      if (err != cudaSuccess) return err;
      resident = per_sm * MultiprocessorCount();
    }
    *fits = resident >= int(cfg.gridDim.x);
    return cudaSuccess;
  }

  cudaError_t Launch(int32_t* a, int32_t* b, int phases, unsigned* bar) const {
    return cudaLaunchKernelEx(&cfg, BarrierPhasesKernel<KIND>, a, b, int(cfg.gridDim.x), phases,
                              bar);
  }
};

struct Buffers {
  int32_t* a = nullptr;
  int32_t* b = nullptr;
  unsigned* bar = nullptr;
  ~Buffers() {
    (void)cudaFree(a);
    (void)cudaFree(b);
    (void)cudaFree(bar);
  }
};

absl::Status Reset(const Buffers& buf, int blocks, cudaStream_t stream) {
  std::vector<int32_t> init(static_cast<size_t>(blocks));
  for (int i = 0; i < blocks; ++i) init[size_t(i)] = i;
  SYNC_PROBE_TRY(CudaStatus(cudaMemcpyAsync(buf.a, init.data(), init.size() * sizeof(int32_t),
                                            cudaMemcpyHostToDevice, stream),
                            "sync probe: uploading the initial values"));
  SYNC_PROBE_TRY(CudaStatus(cudaMemsetAsync(buf.bar, 0, 2 * sizeof(unsigned), stream),
                            "sync probe: zeroing the barrier"));
  SYNC_PROBE_TRY(CudaStatus(cudaStreamSynchronize(stream), "sync probe: cudaStreamSynchronize"));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> Result(const Buffers& buf, int blocks, int phases) {
  std::vector<int32_t> v(static_cast<size_t>(blocks));
  const int32_t* src = phases % 2 == 0 ? buf.a : buf.b;
  SYNC_PROBE_TRY(
      CudaStatus(cudaMemcpy(v.data(), src, v.size() * sizeof(int32_t), cudaMemcpyDeviceToHost),
                 "sync probe: reading the values back"));
  return v;
}

// Runs `run` (a whole chain from the initial values) once untimed, then `repeats` times timed;
// the buffers hold the last run's values. Returns the best µs a phase (0 without repeats).
template <typename Run>
absl::StatusOr<double> TimeRuns(const Buffers& buf, const SyncProbeParams& p, cudaStream_t stream,
                                Run run) {
  SYNC_PROBE_TRY(Reset(buf, p.blocks, stream));
  SYNC_PROBE_TRY(run());
  SYNC_PROBE_TRY(CudaStatus(cudaStreamSynchronize(stream), "sync probe: untimed run"));
  if (p.repeats == 0) return 0.0;
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  absl::Status st = CudaStatus(cudaEventCreate(&e0), "cudaEventCreate");
  if (st.ok()) st.Update(CudaStatus(cudaEventCreate(&e1), "cudaEventCreate"));
  double best = 0.0;
  for (int r = 0; r < p.repeats && st.ok(); ++r) {
    st.Update(Reset(buf, p.blocks, stream));
    if (!st.ok()) break;
    (void)cudaEventRecord(e0, stream);
    st.Update(run());
    (void)cudaEventRecord(e1, stream);
    if (st.ok()) st.Update(CudaStatus(cudaEventSynchronize(e1), "sync probe: timed run"));
    float ms = 0.0f;
    if (st.ok()) st.Update(CudaStatus(cudaEventElapsedTime(&ms, e0, e1), "cudaEventElapsedTime"));
    const double us = double(ms) * 1e3 / p.phases;
    if (st.ok() && (r == 0 || us < best)) best = us;
  }
  if (e0 != nullptr) (void)cudaEventDestroy(e0);
  if (e1 != nullptr) (void)cudaEventDestroy(e1);
  if (!st.ok()) return st;
  return best;
}

}  // namespace

const char* GridBarrierName(GridBarrierKind kind) {
  switch (kind) {
    case GridBarrierKind::kGeneration:
      return "generation";
    case GridBarrierKind::kCounter:
      return "counter";
    case GridBarrierKind::kCluster:
      return "cluster";
  }
  return "?";
}

std::vector<int32_t> SyncProbeReference(int blocks, int phases) {
  std::vector<int32_t> v(size_t(std::max(blocks, 0)));
  for (int i = 0; i < blocks; ++i) v[size_t(i)] = i;
  std::vector<int32_t> next(v.size());
  for (int p = 0; p < phases; ++p) {
    for (int i = 0; i < blocks; ++i) next[size_t(i)] = v[size_t((i + 1) % blocks)] + 1;
    v.swap(next);
  }
  return v;
}

absl::StatusOr<SyncProbeResult> RunSyncProbe(const SyncProbeParams& p) {
  if (p.blocks < 1 || p.phases < 1 || p.repeats < 0 || p.threads < 32 || p.threads > 1024 ||
      p.threads % 32 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("RunSyncProbe: blocks ", p.blocks, " threads ", p.threads, " phases ",
                     p.phases, " repeats ", p.repeats,
                     " (blocks >= 1, threads 32-1024 in warps, phases >= 1, "
                     "repeats >= 0)"));
  }
  Buffers buf;
  SYNC_PROBE_TRY(
      CudaStatus(cudaMalloc(&buf.a, size_t(p.blocks) * sizeof(int32_t)), "sync probe: cudaMalloc"));
  SYNC_PROBE_TRY(
      CudaStatus(cudaMalloc(&buf.b, size_t(p.blocks) * sizeof(int32_t)), "sync probe: cudaMalloc"));
  SYNC_PROBE_TRY(CudaStatus(cudaMalloc(&buf.bar, 2 * sizeof(unsigned)), "sync probe: cudaMalloc"));
  cudaStream_t stream = nullptr;
  SYNC_PROBE_TRY(CudaStatus(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking),
                            "sync probe: cudaStreamCreate"));
  SyncProbeResult res;
  absl::Status st;
  // The chains, captured once each into a graph (as the model's decode step is).
  for (int pdl = 1; pdl >= 0 && st.ok(); --pdl) {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    st.Update(CudaStatus(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal),
                         "sync probe: cudaStreamBeginCapture"));
    if (st.ok()) {
      // PDL asked for explicitly, whatever ProgrammaticLaunch() says for the model's kernels.
      cudaLaunchAttribute attr;
      attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
      attr.val.programmaticStreamSerializationAllowed = 1;
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = dim3(unsigned(p.blocks));
      cfg.blockDim = dim3(unsigned(p.threads));
      cfg.stream = stream;
      cfg.attrs = &attr;
      cfg.numAttrs = pdl == 1 ? 1 : 0;
      for (int ph = 0; ph < p.phases && st.ok(); ++ph) {
        const int32_t* in = ph % 2 == 0 ? buf.a : buf.b;
        int32_t* out = ph % 2 == 0 ? buf.b : buf.a;
        st.Update(CudaStatus(cudaLaunchKernelEx(&cfg, ChainPhaseKernel, in, out, p.blocks),
                             "sync probe: launching ChainPhaseKernel"));
      }
      const absl::Status end =
          CudaStatus(cudaStreamEndCapture(stream, &graph), "sync probe: cudaStreamEndCapture");
      if (st.ok()) st = end;
    }
    if (st.ok()) {
      st.Update(
          CudaStatus(cudaGraphInstantiate(&exec, graph, 0), "sync probe: cudaGraphInstantiate"));
    }
    if (st.ok()) {
      auto t = TimeRuns(buf, p, stream, [&] {
        return CudaStatus(cudaGraphLaunch(exec, stream), "sync probe: cudaGraphLaunch");
      });
      if (!t.ok()) st = t.status();
      auto v = st.ok() ? Result(buf, p.blocks, p.phases) : absl::StatusOr<std::vector<int32_t>>(st);
      if (st.ok() && !v.ok()) st = v.status();
      if (st.ok()) {
        (pdl == 1 ? res.chain : res.chain_plain) = *std::move(v);
        (pdl == 1 ? res.chain_us : res.chain_plain_us) = *t;
      }
    }
    if (exec != nullptr) (void)cudaGraphExecDestroy(exec);
    if (graph != nullptr) (void)cudaGraphDestroy(graph);
  }
  // The persistent kernels: only if every block can be resident (else a barrier would hang).
  auto persistent = [&](auto kind_tag) {
    constexpr GridBarrierKind kKind = decltype(kind_tag)::value;
    SyncProbeResult::Barrier& out = res.barriers[int(kKind)];
    const BarrierLaunch<kKind> launch(p.blocks, p.threads, stream);
    bool fits = false;
    st.Update(CudaStatus(launch.Fits(&fits), "sync probe: occupancy of BarrierPhasesKernel"));
    out.skipped = !fits;
    if (!st.ok() || out.skipped) return;
    auto t = TimeRuns(buf, p, stream, [&] {
      return CudaStatus(launch.Launch(buf.a, buf.b, p.phases, buf.bar),
                        "sync probe: launching BarrierPhasesKernel");
    });
    if (!t.ok()) {
      st.Update(t.status());
      return;
    }
    auto v = Result(buf, p.blocks, p.phases);
    if (!v.ok()) {
      st.Update(v.status());
      return;
    }
    out.values = *std::move(v);
    out.us = *t;
  };
  if (st.ok()) {
    persistent(std::integral_constant<GridBarrierKind, GridBarrierKind::kGeneration>{});
  }
  if (st.ok()) persistent(std::integral_constant<GridBarrierKind, GridBarrierKind::kCounter>{});
  if (st.ok()) persistent(std::integral_constant<GridBarrierKind, GridBarrierKind::kCluster>{});
  (void)cudaStreamDestroy(stream);
  if (!st.ok()) return st;
  return res;
}

}  // namespace resa::cuda

#undef SYNC_PROBE_TRY
