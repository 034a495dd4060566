#include <algorithm>
#include <cfloat>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch.h"
#include "runtime/engine/cuda/model_ops_common.cuh"
#include "runtime/engine/cuda/model_ops_cuda.h"

namespace resa::cuda {
namespace {

using detail::AwaitPreviousKernel;
using ops_internal::kThreads;
using ops_internal::PairBias;
using ops_internal::QkvRopePairAt;
using ops_internal::RopeCosSin;
using ops_internal::WarpSum;

unsigned Blocks(int64_t n, int threads = kThreads) {
  const int64_t b = (n + threads - 1) / threads;
  return unsigned(b < 65535 * 16 ? b : 65535 * 16);
}

__global__ void EmbedKernel(const __nv_bfloat16* table, const int32_t* tokens, int hidden,
                            float* h) {
  AwaitPreviousKernel();
  const int r = blockIdx.x;
  const __nv_bfloat16* e = table + size_t(tokens[r]) * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    h[size_t(r) * hidden + i] = __bfloat162float(e[i]);
  }
}

// One row a block, 512 threads; thread t holds elements t + 512 k (k < V) in registers, so the
// row is read once and the norm weights, constant, are loaded before the PDL wait (V = 0: any
// dim, by loops that read h and w again after the reduction). Both give the same bits: each
// thread adds its squares in element order and the block reduction is the same.
// EMBED (EmbedRmsNormCuda): the row is the embedding row of tokens[r] (bf16, widened), stored to
// h, in place of h + add: the bits of EmbedKernel and then this kernel with add = null.
template <int V, bool EMBED = false>
__global__ void AddRmsNormKernel(float* h, const float* add, const float* w, int dim, float eps,
                                 __nv_bfloat16* x, const __nv_bfloat16* table,
                                 const int32_t* tokens) {
  __shared__ float partial[32];
  const size_t base = size_t(blockIdx.x) * dim;
  float wv[V > 0 ? V : 1], hv[V > 0 ? V : 1];
  if constexpr (V > 0) {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int i = threadIdx.x + 512 * k;
      wv[k] = x != nullptr && i < dim ? w[i] : 0.0f;
    }
  }
  AwaitPreviousKernel();
  const __nv_bfloat16* e = nullptr;
  if constexpr (EMBED) e = table + size_t(tokens[blockIdx.x]) * dim;
  float ss = 0.0f;
  if constexpr (V > 0) {
    float av[V];  // every load issued before the first store (add may alias h)
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int i = threadIdx.x + 512 * k;
      if constexpr (EMBED) {
        hv[k] = i < dim ? __bfloat162float(e[i]) : 0.0f;
      } else {
        hv[k] = i < dim ? h[base + i] : 0.0f;
        av[k] = add != nullptr && i < dim ? add[base + i] : 0.0f;
      }
    }
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int i = threadIdx.x + 512 * k;
      if (i < dim) {
        if (EMBED) {
          h[base + i] = hv[k];
        } else if (add != nullptr) {
          hv[k] += av[k];
          h[base + i] = hv[k];
        }
        ss += hv[k] * hv[k];
      }
    }
  } else {
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
      float v;
      if constexpr (EMBED) {
        v = __bfloat162float(e[i]);
        h[base + i] = v;
      } else {
        v = h[base + i];
        if (add != nullptr) {
          v += add[base + i];
          h[base + i] = v;
        }
      }
      ss += v * v;
    }
  }
  ss = WarpSum(ss);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    float t = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0.0f;
    t = WarpSum(t);
    if (threadIdx.x == 0) partial[0] = t;
  }
  __syncthreads();
  if (x == nullptr) return;
  const float inv = rsqrtf(partial[0] / float(dim) + eps);
  if constexpr (V > 0) {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int i = threadIdx.x + 512 * k;
      if (i < dim) x[base + i] = __float2bfloat16(hv[k] * inv * wv[k]);
    }
  } else {
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
      x[base + i] = __float2bfloat16(h[base + i] * inv * w[i]);
    }
  }
}

// One block per row, d / 2 x g threads (g head lanes): the first d / 2 compute the row's pair
// rotations once (fp64, RopeCosSin) for all of its heads; thread (i, l) then does pair i of
// heads l, l + g, ... (QkvRopePairAt, which the QKV GEMV's epilogue runs: the same bits).
__global__ void QkvRopeKernel(const QkvRopeParams p) {
  __shared__ float2 rot[512];  // d / 2 <= 512
  AwaitPreviousKernel();
  const int r = blockIdx.x, half = p.head_dim / 2;
  const int i = int(threadIdx.x) % half, lane = int(threadIdx.x) / half;
  const int lanes = int(blockDim.x) / half;
  if (lane == 0) {
    float cs, sn;
    RopeCosSin(p, r, i, cs, sn);
    rot[i] = make_float2(cs, sn);
  }
  __syncthreads();
  const float2 cs_sn = rot[i];
  const int total = p.num_heads + 2 * p.num_kv_heads;
  for (int head = lane; head < total; head += lanes) {
    const float* src = p.qkv + (size_t(r) * total + head) * p.head_dim;
    QkvRopePairAt(p, r, head, i, src[i], src[i + half], cs_sn.x, cs_sn.y, PairBias(p, head, i));
  }
}

// Four consecutive gate_up values as fp32 (one 16-byte fp32 or 8-byte bf16 load).
__device__ __forceinline__ float4 Load4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}
__device__ __forceinline__ float4 Load4(const __nv_bfloat16* p) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
  const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
  return make_float4(lo.x, lo.y, hi.x, hi.y);
}

// grid (ceil(inter / (V 256)), min(rows, 65535)): V consecutive columns a thread, rows strided
// by gridDim.y; V = 4 (16- or 8-byte loads, 8-byte stores) when inter % 4 == 0. T: float or
// __nv_bfloat16 gate_up.
template <int V, typename T>
__global__ void SiluMulKernel(const T* gu, int rows, int inter, __nv_bfloat16* act) {
  AwaitPreviousKernel();
  const int i = (int(blockIdx.x) * int(blockDim.x) + int(threadIdx.x)) * V;
  if (i >= inter) return;
  for (int r = blockIdx.y; r < rows; r += gridDim.y) {
    const T* g = gu + size_t(r) * 2 * inter + i;
    const T* u = g + inter;
    __nv_bfloat16* out = act + size_t(r) * inter + i;
    if constexpr (V == 4) {
      const float4 gv = Load4(g);
      const float4 uv = Load4(u);
      const __nv_bfloat162 lo =
          __halves2bfloat162(__float2bfloat16(gv.x / (1.0f + expf(-gv.x)) * uv.x),
                             __float2bfloat16(gv.y / (1.0f + expf(-gv.y)) * uv.y));
      const __nv_bfloat162 hi =
          __halves2bfloat162(__float2bfloat16(gv.z / (1.0f + expf(-gv.z)) * uv.z),
                             __float2bfloat16(gv.w / (1.0f + expf(-gv.w)) * uv.w));
      uint2 packed;
      packed.x = *reinterpret_cast<const uint32_t*>(&lo);
      packed.y = *reinterpret_cast<const uint32_t*>(&hi);
      *reinterpret_cast<uint2*>(out) = packed;
    } else {
      const float gf = float(g[0]), uf = float(u[0]);
      out[0] = __float2bfloat16(gf / (1.0f + expf(-gf)) * uf);
    }
  }
}

template <typename T>
absl::Status LaunchSiluMul(const T* gu, int rows, int inter, __nv_bfloat16* act,
                           cudaStream_t stream) {
  if (rows < 0 || inter <= 0) return absl::InvalidArgumentError("SiluMulCuda: bad shape");
  if (rows == 0) return absl::OkStatus();
  const bool vec = inter % 4 == 0 && (reinterpret_cast<uintptr_t>(gu) % (4 * sizeof(T)) == 0) &&
                   (reinterpret_cast<uintptr_t>(act) % 8 == 0);
  const int v = vec ? 4 : 1;
  const dim3 grid(unsigned((inter / v + kThreads - 1) / kThreads), unsigned(std::min(rows, 65535)));
  return CudaStatus(vec ? LaunchKernel(SiluMulKernel<4, T>, grid, dim3(kThreads), 0, stream, {}, gu,
                                       rows, inter, act)
                        : LaunchKernel(SiluMulKernel<1, T>, grid, dim3(kThreads), 0, stream, {}, gu,
                                       rows, inter, act),
                    "launching SiluMulKernel");
}

// With `vec` (in 16-byte, out 8-byte aligned) four elements a thread (float4 in, 8 bytes out)
// over the n / 4 groups, then the tail one at a time; without, all one at a time.
__global__ void ToBf16Kernel(const float* in, int64_t n, bool vec, __nv_bfloat16* out) {
  AwaitPreviousKernel();
  const int64_t groups = vec ? n / 4 : 0, stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  for (int64_t q = first; q < groups; q += stride) {
    const float4 v = reinterpret_cast<const float4*>(in)[q];
    const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
    uint2 packed;
    packed.x = *reinterpret_cast<const uint32_t*>(&lo);
    packed.y = *reinterpret_cast<const uint32_t*>(&hi);
    reinterpret_cast<uint2*>(out)[q] = packed;
  }
  for (int64_t i = groups * 4 + first; i < n; i += stride) out[i] = __float2bfloat16(in[i]);
}

__global__ void GatherRowsKernel(const __nv_bfloat16* in, const int32_t* index, int cols,
                                 __nv_bfloat16* out) {
  AwaitPreviousKernel();
  const __nv_bfloat16* src = in + size_t(index[blockIdx.x]) * cols;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) out[size_t(blockIdx.x) * cols + i] = src[i];
}

// One block per row: (value desc, index asc), NaN treated as -inf.
__global__ void ArgmaxKernel(const float* logits, int n, int32_t* out) {
  __shared__ float sv[32];
  __shared__ int si[32];
  AwaitPreviousKernel();
  const float* row = logits + size_t(blockIdx.x) * n;
  float best = -INFINITY;
  int bi = n;
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    float v = row[j];
    if (v != v) v = -INFINITY;
    if (v > best || (v == best && j < bi)) {
      best = v;
      bi = j;
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ov > best || (ov == best && oi < bi)) {
      best = ov;
      bi = oi;
    }
  }
  if ((threadIdx.x & 31) == 0) {
    sv[threadIdx.x >> 5] = best;
    si[threadIdx.x >> 5] = bi;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < int(blockDim.x / 32); ++w) {
      if (sv[w] > best || (sv[w] == best && si[w] < bi)) {
        best = sv[w];
        bi = si[w];
      }
    }
    out[blockIdx.x] = bi < n ? bi : 0;
  }
}

__device__ __forceinline__ float Noise(uint64_t seed, uint64_t i) {
  uint64_t x = seed + i * 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  x ^= x >> 31;
  return float(x >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

template <typename T>
__global__ void FillUniformKernel(T* out, int64_t n, uint64_t seed, float scale, float offset) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float v = offset + scale * Noise(seed, uint64_t(i));
    if constexpr (sizeof(T) == 2) {
      out[i] = __float2bfloat16(v);
    } else {
      out[i] = v;
    }
  }
}

// grid (pages, hkv), d threads; summary in the device layout (SummaryIndex).
__global__ void SummarizePagesKernel(const __nv_bfloat16* k, int hkv, int d,
                                     __nv_bfloat16* summary) {
  const int32_t page = int32_t(blockIdx.x);
  const int h = int(blockIdx.y);
  const __nv_bfloat16* kp = k + (size_t(page) * hkv + h) * 16 * d;
  const int i = threadIdx.x;
  float lo = __bfloat162float(kp[i]), hi = lo;
  for (int t = 1; t < 16; ++t) {
    const float v = __bfloat162float(kp[size_t(t) * d + i]);
    lo = fminf(lo, v);
    hi = fmaxf(hi, v);
  }
  summary[SummaryIndex(page, h, 0, i, hkv, d)] = __float2bfloat16(lo);
  summary[SummaryIndex(page, h, 1, i, hkv, d)] = __float2bfloat16(hi);
}

// grid (n, 3): y = 0 K, 1 V (16-byte copies of a page's contiguous run), 2 summary (element
// copies: a page's summary is strided in its group, SummaryIndex).
__global__ void CopyPagesKernel(PagedKvCuda kv, const int32_t* src, const int32_t* dst) {
  const int i = blockIdx.x;
  const int32_t from_page = src[i], to_page = dst[i];
  const int hkv = kv.num_kv_heads, d = kv.head_dim;
  if (blockIdx.y == 2) {
    // j = (h * 2 + part) * d + dim, the CPU order of one page's summary.
    for (int j = threadIdx.x; j < hkv * 2 * d; j += blockDim.x) {
      const int dim = j % d, part = (j / d) % 2, h = j / (2 * d);
      kv.summary[SummaryIndex(to_page, h, part, dim, hkv, d)] =
          kv.summary[SummaryIndex(from_page, h, part, dim, hkv, d)];
    }
    return;
  }
  const size_t elems = size_t(hkv) * d * kPageTokens;
  const __nv_bfloat16* base = blockIdx.y == 0 ? kv.k : kv.v;
  const uint4* from = reinterpret_cast<const uint4*>(base + size_t(from_page) * elems);
  uint4* to = reinterpret_cast<uint4*>(const_cast<__nv_bfloat16*>(base) + size_t(to_page) * elems);
  for (size_t j = threadIdx.x; j < elems / 8; j += blockDim.x) to[j] = from[j];
}

}  // namespace

absl::Status CopyPagesCuda(const PagedKvCuda& kv, const int32_t* src, const int32_t* dst, int n,
                           cudaStream_t stream) {
  if (n < 0 || n > 65535 * 1024) return absl::InvalidArgumentError("CopyPagesCuda: bad count");
  if (n == 0) return absl::OkStatus();
  CopyPagesKernel<<<dim3(unsigned(n), 3), kThreads, 0, stream>>>(kv, src, dst);
  return CheckLaunch("CopyPagesKernel");
}

absl::Status EmbedCuda(const __nv_bfloat16* table, const int32_t* tokens, int rows, int hidden,
                       float* h, cudaStream_t stream) {
  if (rows < 0 || hidden <= 0) return absl::InvalidArgumentError("EmbedCuda: bad shape");
  if (rows == 0) return absl::OkStatus();
  return CudaStatus(LaunchKernel(EmbedKernel, dim3(unsigned(rows)), dim3(kThreads), 0, stream, {},
                                 table, tokens, hidden, h),
                    "launching EmbedKernel");
}

namespace {

template <bool EMBED>
absl::Status LaunchRmsNorm(float* h, const float* add, const float* weight, int rows, int dim,
                           float eps, __nv_bfloat16* x, const __nv_bfloat16* table,
                           const int32_t* tokens, cudaStream_t stream) {
  auto kernel = dim <= 512 * 2   ? AddRmsNormKernel<2, EMBED>
                : dim <= 512 * 4 ? AddRmsNormKernel<4, EMBED>
                : dim <= 512 * 8 ? AddRmsNormKernel<8, EMBED>
                                 : AddRmsNormKernel<0, EMBED>;
  return CudaStatus(LaunchKernel(kernel, dim3(unsigned(rows)), dim3(512), 0, stream, {}, h, add,
                                 weight, dim, eps, x, table, tokens),
                    "launching AddRmsNormKernel");
}

}  // namespace

absl::Status AddRmsNormCuda(float* h, const float* add, const float* weight, int rows, int dim,
                            float eps, __nv_bfloat16* x, cudaStream_t stream) {
  if (rows < 0 || dim <= 0) return absl::InvalidArgumentError("AddRmsNormCuda: bad shape");
  if (rows == 0) return absl::OkStatus();
  return LaunchRmsNorm<false>(h, add, weight, rows, dim, eps, x, nullptr, nullptr, stream);
}

absl::Status EmbedRmsNormCuda(const __nv_bfloat16* table, const int32_t* tokens, int rows, int dim,
                              const float* weight, float eps, float* h, __nv_bfloat16* x,
                              cudaStream_t stream) {
  if (rows < 0 || dim <= 0) return absl::InvalidArgumentError("EmbedRmsNormCuda: bad shape");
  if (rows == 0) return absl::OkStatus();
  if (table == nullptr || tokens == nullptr || weight == nullptr || h == nullptr || x == nullptr) {
    return absl::InvalidArgumentError("EmbedRmsNormCuda: null pointer");
  }
  return LaunchRmsNorm<true>(h, nullptr, weight, rows, dim, eps, x, table, tokens, stream);
}

absl::Status QkvRopeCuda(const QkvRopeParams& p, cudaStream_t stream) {
  if (p.rows < 0 || p.num_heads <= 0 || p.num_kv_heads <= 0 || p.head_dim <= 0 ||
      p.head_dim % 2 != 0 || p.head_dim > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("QkvRopeCuda: bad shape (heads ", p.num_heads,
                                                   "/", p.num_kv_heads, ", d ", p.head_dim, ")"));
  }
  if (p.kv.k != nullptr) {
    return absl::InvalidArgumentError(
        "QkvRopeCuda: the cache append (kv) is GemvQkvRopeBf16Cuda's; use WriteKvCuda");
  }
  if (p.rows == 0) return absl::OkStatus();
  const int half = p.head_dim / 2, total = p.num_heads + 2 * p.num_kv_heads;
  const int lanes = std::max(1, std::min(total, kThreads / half));
  return CudaStatus(LaunchKernel(QkvRopeKernel, dim3(unsigned(p.rows)),
                                 dim3(unsigned(half * lanes)), 0, stream, {}, p),
                    "launching QkvRopeKernel");
}

absl::Status SiluMulCuda(const float* gu, int rows, int inter, __nv_bfloat16* act,
                         cudaStream_t stream) {
  return LaunchSiluMul(gu, rows, inter, act, stream);
}

absl::Status SiluMulCuda(const __nv_bfloat16* gu, int rows, int inter, __nv_bfloat16* act,
                         cudaStream_t stream) {
  return LaunchSiluMul(gu, rows, inter, act, stream);
}

absl::Status ToBf16Cuda(const float* in, int64_t n, __nv_bfloat16* out, cudaStream_t stream) {
  if (n < 0) return absl::InvalidArgumentError("ToBf16Cuda: negative size");
  if (n == 0) return absl::OkStatus();
  const bool vec =
      reinterpret_cast<uintptr_t>(in) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 8 == 0;
  return CudaStatus(LaunchKernel(ToBf16Kernel, dim3(Blocks(vec ? (n + 3) / 4 : n)), dim3(kThreads),
                                 0, stream, {}, in, n, vec, out),
                    "launching ToBf16Kernel");
}

absl::Status GatherRowsCuda(const __nv_bfloat16* in, const int32_t* index, int n, int cols,
                            __nv_bfloat16* out, cudaStream_t stream) {
  if (n < 0 || cols <= 0) return absl::InvalidArgumentError("GatherRowsCuda: bad shape");
  if (n == 0) return absl::OkStatus();
  return CudaStatus(LaunchKernel(GatherRowsKernel, dim3(unsigned(n)), dim3(kThreads), 0, stream, {},
                                 in, index, cols, out),
                    "launching GatherRowsKernel");
}

absl::Status ArgmaxCuda(const float* logits, int rows, int n, int32_t* out, cudaStream_t stream) {
  if (rows < 0 || n <= 0) return absl::InvalidArgumentError("ArgmaxCuda: bad shape");
  if (rows == 0) return absl::OkStatus();
  return CudaStatus(
      LaunchKernel(ArgmaxKernel, dim3(unsigned(rows)), dim3(1024), 0, stream, {}, logits, n, out),
      "launching ArgmaxKernel");
}

absl::Status FillUniformBf16Cuda(__nv_bfloat16* out, int64_t n, uint64_t seed, float scale,
                                 float offset, cudaStream_t stream) {
  if (n <= 0) return absl::OkStatus();
  FillUniformKernel<<<Blocks(n), kThreads, 0, stream>>>(out, n, seed, scale, offset);
  return CheckLaunch("FillUniformKernel<bf16>");
}

absl::Status FillUniformF32Cuda(float* out, int64_t n, uint64_t seed, float scale, float offset,
                                cudaStream_t stream) {
  if (n <= 0) return absl::OkStatus();
  FillUniformKernel<<<Blocks(n), kThreads, 0, stream>>>(out, n, seed, scale, offset);
  return CheckLaunch("FillUniformKernel<f32>");
}

absl::Status SummarizePagesCuda(const __nv_bfloat16* k, int64_t num_pages, int num_kv_heads,
                                int head_dim, __nv_bfloat16* summary, cudaStream_t stream) {
  if (num_pages < 0 || num_pages > (int64_t(1) << 31) - 1 || num_kv_heads <= 0 ||
      num_kv_heads > 65535 || head_dim <= 0 || head_dim > 1024) {
    return absl::InvalidArgumentError("SummarizePagesCuda: bad shape");
  }
  if (num_pages == 0) return absl::OkStatus();
  SummarizePagesKernel<<<dim3(unsigned(num_pages), unsigned(num_kv_heads)), head_dim, 0, stream>>>(
      k, num_kv_heads, head_dim, summary);
  return CheckLaunch("SummarizePagesKernel");
}

}  // namespace resa::cuda
