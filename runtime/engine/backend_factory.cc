#include "runtime/engine/backend_factory.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/core/status.h"
#include "runtime/engine/kv_cache.h"

#if RESA_HAVE_CUDA
#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/selection_cuda.h"
#include "runtime/engine/cuda/cuda_model.h"
#endif

namespace resa {

#if RESA_HAVE_CUDA
namespace {

// Makes `index` the calling thread's current device (the backend allocates and launches there).
absl::Status UseCudaDevice(int index) {
  int count = 0;
  if (cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess) {
    return absl::FailedPreconditionError(
        absl::StrCat("--device cuda: no usable CUDA device (", cudaGetErrorString(e), ")"));
  }
  if (index < 0 || index >= count) {
    return absl::InvalidArgumentError(absl::StrCat("CUDA device ", index, " does not exist (",
                                                   count, " visible)"));
  }
  if (cudaError_t e = cudaSetDevice(index); e != cudaSuccess) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot use CUDA device ", index, ": ", cudaGetErrorString(e)));
  }
  return absl::OkStatus();
}

}  // namespace
#endif

absl::StatusOr<Device> ParseDevice(std::string_view name) {
  if (name == "cpu") return Device::kCpu;
  if (name == "cuda") return Device::kCuda;
  return absl::InvalidArgumentError(
      absl::StrCat("--device must be cpu or cuda, got '", std::string(name), "'"));
}

bool CudaBackendBuilt() { return RESA_HAVE_CUDA != 0; }

namespace {
[[maybe_unused]] constexpr char kNoCudaBackend[] =
    "--device cuda: this build has no CUDA backend (configure with -DRESA_CUDA=ON where nvcc is "
    "installed)";
}  // namespace

absl::Status CheckDevice(Device device, int cuda_device) {
  if (device == Device::kCpu) return absl::OkStatus();
#if RESA_HAVE_CUDA
  return UseCudaDevice(cuda_device);
#else
  (void)cuda_device;
  return absl::UnimplementedError(kNoCudaBackend);
#endif
}

int CudaDeviceCount() {
#if RESA_HAVE_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
#else
  return 0;
#endif
}

CudaTuning GetCudaTuning() {
  CudaTuning t;
#if RESA_HAVE_CUDA
  t.programmatic_launch = cuda::ProgrammaticLaunch();
  t.swiglu_epilogue = cuda::SwiGluEpilogue();
  t.fused_norms = cuda::FusedNorms();
  t.wgmma_chunk = cuda::WgmmaChunkDefault();
  t.selection_hints = cuda::SelectionHints();
  t.l2_fetch_bytes = cuda::L2FetchGranularity();
#endif
  return t;
}

void SetCudaTuning(const CudaTuning& tuning) {
#if RESA_HAVE_CUDA
  cuda::SetProgrammaticLaunch(tuning.programmatic_launch);
  cuda::SetSwiGluEpilogue(tuning.swiglu_epilogue);
  cuda::SetFusedNorms(tuning.fused_norms);
  cuda::SetWgmmaChunkDefault(tuning.wgmma_chunk);
  cuda::SetSelectionHints(tuning.selection_hints);
  cuda::SetL2FetchGranularity(tuning.l2_fetch_bytes);
#else
  (void)tuning;
#endif
}

SelectionHintTally ReadSelectionHintTally() {
  SelectionHintTally t;
#if RESA_HAVE_CUDA
  if (auto c = cuda::ReadSelectionHintCounts(); c.ok()) {
    t.from_candidates = c->from_candidates;
    t.whole_tail = c->whole_tail;
    t.from_histogram = c->from_histogram;
  }
#endif
  return t;
}

absl::StatusOr<Backend> MakeBackend(const CpuWeights& weights, const BackendOptions& options) {
  Backend b;
  const int64_t pages = (options.kv_tokens + kPageTokens - 1) / kPageTokens;
  if (pages > (int64_t(1) << 27)) {
    return absl::InvalidArgumentError(absl::StrCat("KV capacity of ", options.kv_tokens,
                                                   " tokens is more than one cache can index"));
  }
  if (options.device == Device::kCpu) {
    if (options.tp_comm != nullptr || options.sp_comm != nullptr) {
      return absl::InvalidArgumentError(
          "MakeBackend builds one CPU rank; a CPU grid rank is a CpuModel::Create");
    }
    if (pages <= 0) return absl::InvalidArgumentError("the CPU backend needs a KV capacity > 0");
    RESA_ASSIGN_OR_RETURN(auto cache, KvCache::Create(weights.config, int32_t(pages)));
    b.description = absl::StrFormat("CPU: KV cache %d tokens (%.2f GiB fp32)", cache->max_tokens(),
                                    cache->bytes() / 1073741824.0);
    b.model = std::make_unique<OwningCpuBackend>(std::move(cache), weights);
    return b;
  }
#if RESA_HAVE_CUDA
  RESA_RETURN_IF_ERROR(UseCudaDevice(options.cuda_device));
  cuda::CudaModelOptions o;
  o.kv_pages = int32_t(pages);
  o.gemv_max_rows = options.gemv_max_rows;
  const cuda::CudaModelGroups groups{options.tp_comm, options.sp_comm, options.sp_host_comm};
  RESA_ASSIGN_OR_RETURN(auto model, cuda::CudaModel::FromCpuWeights(weights, o, groups));
  b.description = model->Describe();
  b.model = std::move(model);
  return b;
#else
  return absl::UnimplementedError(kNoCudaBackend);
#endif
}

absl::StatusOr<Backend> MakeRandomBackend(const ModelConfig& config, uint64_t seed,
                                          const BackendOptions& options) {
  if (options.device == Device::kCpu) {
    return absl::UnimplementedError(
        "random device weights are a CUDA-backend feature; on the CPU use synthetic:<shape>");
  }
#if RESA_HAVE_CUDA
  RESA_RETURN_IF_ERROR(UseCudaDevice(options.cuda_device));
  cuda::CudaModelOptions o;
  o.kv_pages = int32_t((options.kv_tokens + kPageTokens - 1) / kPageTokens);
  o.gemv_max_rows = options.gemv_max_rows;
  RESA_ASSIGN_OR_RETURN(auto w, cuda::DeviceWeights::Random(config, seed, nullptr));
  RESA_ASSIGN_OR_RETURN(auto model, cuda::CudaModel::Create(std::move(w), o));
  Backend b;
  b.description = model->Describe();
  b.model = std::move(model);
  return b;
#else
  (void)config;
  (void)seed;
  return absl::UnimplementedError(kNoCudaBackend);
#endif
}

absl::StatusOr<double> MeasureDeviceCopyGbps(Device device) {
  if (device == Device::kCpu) {
    return absl::UnimplementedError("MeasureDeviceCopyGbps: the CPU has MeasureMemoryCeiling");
  }
#if RESA_HAVE_CUDA
  return cuda::MeasureCopyGbps(size_t(2) << 30);
#else
  return absl::UnimplementedError(kNoCudaBackend);
#endif
}

absl::StatusOr<double> MeasureDeviceGemmTflops(Device device) {
  if (device == Device::kCpu) {
    return absl::UnimplementedError("MeasureDeviceGemmTflops: not for the CPU");
  }
#if RESA_HAVE_CUDA
  return cuda::MeasureGemmTflops(8192);
#else
  return absl::UnimplementedError(kNoCudaBackend);
#endif
}

}  // namespace resa
