#include <cfloat>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "runtime/engine/cuda/model_ops_cuda.h"

namespace resa::cuda {
namespace {

constexpr int kThreads = 256;

unsigned Blocks(int64_t n, int threads = kThreads) {
  const int64_t b = (n + threads - 1) / threads;
  return unsigned(b < 65535 * 16 ? b : 65535 * 16);
}

__device__ __forceinline__ float WarpSum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

__global__ void EmbedKernel(const __nv_bfloat16* table, const int32_t* tokens, int hidden,
                            float* h) {
  const int r = blockIdx.x;
  const __nv_bfloat16* e = table + size_t(tokens[r]) * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    h[size_t(r) * hidden + i] = __bfloat162float(e[i]);
  }
}

__global__ void AddRmsNormKernel(float* h, const float* add, const float* w, int dim, float eps,
                                 __nv_bfloat16* x) {
  __shared__ float partial[32];
  const size_t base = size_t(blockIdx.x) * dim;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    float v = h[base + i];
    if (add != nullptr) {
      v += add[base + i];
      h[base + i] = v;
    }
    ss += v * v;
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
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    x[base + i] = __float2bfloat16(h[base + i] * inv * w[i]);
  }
}

// grid (rows, H + 2 Hkv), d / 2 threads: thread i rotates the pair (i, i + d/2).
__global__ void QkvRopeKernel(const QkvRopeParams p) {
  const int r = blockIdx.x, head = blockIdx.y, i = threadIdx.x;
  const int d = p.head_dim, half = d / 2;
  const int total = p.num_heads + 2 * p.num_kv_heads;
  const size_t col = size_t(head) * d;
  const float* src = p.qkv + size_t(r) * total * d + col;
  float a = src[i], b = src[i + half];
  if (p.bias != nullptr) {
    a += p.bias[col + i];
    b += p.bias[col + i + half];
  }
  __nv_bfloat16* dst;
  if (head < p.num_heads) {
    dst = p.q + (size_t(r) * p.num_heads + head) * d;
  } else if (head < p.num_heads + p.num_kv_heads) {
    dst = p.k + (size_t(r) * p.num_kv_heads + (head - p.num_heads)) * d;
  } else {
    dst = p.v + (size_t(r) * p.num_kv_heads + (head - p.num_heads - p.num_kv_heads)) * d;
    dst[i] = __float2bfloat16(a);
    dst[i + half] = __float2bfloat16(b);
    return;
  }
  const double inv_freq = pow(double(p.theta), -2.0 * i / d);
  double s, c;
  sincos(double(p.positions[r]) * inv_freq, &s, &c);
  const float cs = float(c), sn = float(s);
  dst[i] = __float2bfloat16(a * cs - b * sn);
  dst[i + half] = __float2bfloat16(b * cs + a * sn);
}

__global__ void SiluMulKernel(const float* gu, int rows, int inter, __nv_bfloat16* act) {
  const int64_t n = int64_t(rows) * inter;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = idx / inter, i = idx % inter;
    const float g = gu[r * 2 * inter + i], u = gu[r * 2 * inter + inter + i];
    act[idx] = __float2bfloat16(g / (1.0f + expf(-g)) * u);
  }
}

__global__ void ToBf16Kernel(const float* in, int64_t n, __nv_bfloat16* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    out[i] = __float2bfloat16(in[i]);
  }
}

__global__ void GatherRowsKernel(const __nv_bfloat16* in, const int32_t* index, int cols,
                                 __nv_bfloat16* out) {
  const __nv_bfloat16* src = in + size_t(index[blockIdx.x]) * cols;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) out[size_t(blockIdx.x) * cols + i] = src[i];
}

// Eight consecutive x values of row m starting at element 8c, as fp32.
__device__ __forceinline__ void LoadX8(const __nv_bfloat16* x, size_t offset, float (&out)[8]) {
  const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + offset));
  const __nv_bfloat162* xp = reinterpret_cast<const __nv_bfloat162*>(&xv);
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    const float2 f = __bfloat1622float2(xp[t]);
    out[2 * t] = f.x;
    out[2 * t + 1] = f.y;
  }
}
__device__ __forceinline__ void LoadX8(const float* x, size_t offset, float (&out)[8]) {
  const float4 a = __ldg(reinterpret_cast<const float4*>(x + offset));
  const float4 b = __ldg(reinterpret_cast<const float4*>(x + offset) + 1);
  out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
  out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
}

// Output rows per warp: one for a single input row (56 registers, 4 blocks per SM); two for
// batches, so each x load serves two weight rows without the register pressure of more (143
// registers at 8 x 4 left one block per SM and ran slower).
__host__ __device__ constexpr int GemvRowsPerWarp(int m) { return m == 1 ? 1 : 2; }

// Block = 8 warps = (8 / split) groups of `split` warps; group g owns output rows
// [(blockIdx.x * groups + g) * R, + R), and its warps split the k / 8 16-byte chunks of those
// rows into `split` slices (lanes stride by 32 inside a slice). Per chunk a lane streams R
// weight loads (read once, not kept in L1) and reuses each x load (L1/L2 resident) for all R
// rows; partial sums meet in shared memory.
template <int M, typename XT>
__global__ void __launch_bounds__(kThreads) GemvKernel(const __nv_bfloat16* w, const XT* x, int n,
                                                       int k, int split, float* y) {
  constexpr int R = GemvRowsPerWarp(M);
  __shared__ float part[kThreads / 32][M][R];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int groups = (kThreads / 32) / split;
  const int g = warp / split, slice = warp % split;
  const int j0 = (blockIdx.x * groups + g) * R;
  const int chunks = k / 8;
  const int c0 = int(int64_t(slice) * chunks / split), c1 = int(int64_t(slice + 1) * chunks / split);
  const uint4* wr[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int j = j0 + r < n ? j0 + r : n - 1;  // rows past n are computed and dropped
    wr[r] = reinterpret_cast<const uint4*>(w + size_t(j) * k);
  }
  float acc[M][R];
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int r = 0; r < R; ++r) acc[m][r] = 0.0f;
  }
#pragma unroll(R == 1 ? 4 : 2)
  for (int c = c0 + lane; c < c1; c += 32) {
    float wf[R][8];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      uint4 wv;
      asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                   : "=r"(wv.x), "=r"(wv.y), "=r"(wv.z), "=r"(wv.w)
                   : "l"(wr[r] + c));
      const __nv_bfloat162* wp = reinterpret_cast<const __nv_bfloat162*>(&wv);
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        const float2 f = __bfloat1622float2(wp[t]);
        wf[r][2 * t] = f.x;
        wf[r][2 * t + 1] = f.y;
      }
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float xf[8];
      LoadX8(x, size_t(m) * k + size_t(c) * 8, xf);
#pragma unroll
      for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int t = 0; t < 8; ++t) acc[m][r] = fmaf(wf[r][t], xf[t], acc[m][r]);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float v = WarpSum(acc[m][r]);
      if (lane == 0) part[warp][m][r] = v;
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < groups * M * R; i += blockDim.x) {
    const int gg = i / (M * R), m = (i / R) % M, r = i % R;
    const int j = (blockIdx.x * groups + gg) * R + r;
    if (j >= n) continue;
    float sum = 0.0f;
    for (int s = 0; s < split; ++s) sum += part[gg * split + s][m][r];
    y[size_t(m) * n + j] = sum;
  }
}

// One block per row: (value desc, index asc), NaN treated as -inf.
__global__ void ArgmaxKernel(const float* logits, int n, int32_t* out) {
  __shared__ float sv[32];
  __shared__ int si[32];
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

// grid (pages, hkv), d threads.
__global__ void SummarizePagesKernel(const __nv_bfloat16* k, int hkv, int d,
                                     __nv_bfloat16* summary) {
  const size_t ph = size_t(blockIdx.x) * hkv + blockIdx.y;
  const __nv_bfloat16* kp = k + ph * 16 * d;
  const int i = threadIdx.x;
  float lo = __bfloat162float(kp[i]), hi = lo;
  for (int t = 1; t < 16; ++t) {
    const float v = __bfloat162float(kp[size_t(t) * d + i]);
    lo = fminf(lo, v);
    hi = fmaxf(hi, v);
  }
  summary[ph * 2 * d + i] = __float2bfloat16(lo);
  summary[ph * 2 * d + d + i] = __float2bfloat16(hi);
}

// grid (n, 3): y = 0 K, 1 V, 2 summary; 16-byte copies.
__global__ void CopyPagesKernel(PagedKvCuda kv, const int32_t* src, const int32_t* dst) {
  const int i = blockIdx.x;
  const size_t elems = size_t(kv.num_kv_heads) * kv.head_dim * (blockIdx.y < 2 ? kPageTokens : 2);
  const __nv_bfloat16* base = blockIdx.y == 0 ? kv.k : blockIdx.y == 1 ? kv.v : kv.summary;
  const uint4* from = reinterpret_cast<const uint4*>(base + size_t(src[i]) * elems);
  uint4* to = reinterpret_cast<uint4*>(const_cast<__nv_bfloat16*>(base) + size_t(dst[i]) * elems);
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
  EmbedKernel<<<rows, kThreads, 0, stream>>>(table, tokens, hidden, h);
  return CheckLaunch("EmbedKernel");
}

absl::Status AddRmsNormCuda(float* h, const float* add, const float* weight, int rows, int dim,
                            float eps, __nv_bfloat16* x, cudaStream_t stream) {
  if (rows < 0 || dim <= 0) return absl::InvalidArgumentError("AddRmsNormCuda: bad shape");
  if (rows == 0) return absl::OkStatus();
  AddRmsNormKernel<<<rows, 512, 0, stream>>>(h, add, weight, dim, eps, x);
  return CheckLaunch("AddRmsNormKernel");
}

absl::Status QkvRopeCuda(const QkvRopeParams& p, cudaStream_t stream) {
  if (p.rows < 0 || p.num_heads <= 0 || p.num_kv_heads <= 0 || p.head_dim <= 0 ||
      p.head_dim % 2 != 0 || p.head_dim > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("QkvRopeCuda: bad shape (heads ", p.num_heads,
                                                   "/", p.num_kv_heads, ", d ", p.head_dim, ")"));
  }
  if (p.rows == 0) return absl::OkStatus();
  const dim3 grid(unsigned(p.rows), unsigned(p.num_heads + 2 * p.num_kv_heads));
  QkvRopeKernel<<<grid, p.head_dim / 2, 0, stream>>>(p);
  return CheckLaunch("QkvRopeKernel");
}

absl::Status SiluMulCuda(const float* gu, int rows, int inter, __nv_bfloat16* act,
                         cudaStream_t stream) {
  if (rows < 0 || inter <= 0) return absl::InvalidArgumentError("SiluMulCuda: bad shape");
  if (rows == 0) return absl::OkStatus();
  SiluMulKernel<<<Blocks(int64_t(rows) * inter), kThreads, 0, stream>>>(gu, rows, inter, act);
  return CheckLaunch("SiluMulKernel");
}

absl::Status ToBf16Cuda(const float* in, int64_t n, __nv_bfloat16* out, cudaStream_t stream) {
  if (n < 0) return absl::InvalidArgumentError("ToBf16Cuda: negative size");
  if (n == 0) return absl::OkStatus();
  ToBf16Kernel<<<Blocks(n), kThreads, 0, stream>>>(in, n, out);
  return CheckLaunch("ToBf16Kernel");
}

absl::Status GatherRowsCuda(const __nv_bfloat16* in, const int32_t* index, int n, int cols,
                            __nv_bfloat16* out, cudaStream_t stream) {
  if (n < 0 || cols <= 0) return absl::InvalidArgumentError("GatherRowsCuda: bad shape");
  if (n == 0) return absl::OkStatus();
  GatherRowsKernel<<<n, kThreads, 0, stream>>>(in, index, cols, out);
  return CheckLaunch("GatherRowsKernel");
}

template <typename XT>
absl::Status LaunchGemv(const __nv_bfloat16* w, const XT* x, int rows, int n, int k, float* y,
                        cudaStream_t stream) {
  if (rows < 1 || rows > kGemvMaxRows || n <= 0 || k <= 0 || k % 8 != 0 ||
      (reinterpret_cast<uintptr_t>(w) | reinterpret_cast<uintptr_t>(x)) % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("GemvBf16Cuda: bad shape rows ", rows, " n ", n,
                                                   " k ", k, " (k % 8 == 0, 16-byte aligned)"));
  }
  // Split k over more warps until the grid covers the device a few times (small n: o_proj,
  // down), keeping at least 32 chunks (one per lane) per slice.
  const int64_t want_blocks = 4 * int64_t(MultiprocessorCount());
  int split = 1;
  const int per_warp = GemvRowsPerWarp(rows);
  auto blocks = [&](int s) {
    const int64_t rows_per_block = int64_t(per_warp) * ((kThreads / 32) / s);
    return (n + rows_per_block - 1) / rows_per_block;
  };
  while (split < kThreads / 32 && blocks(split) < want_blocks && (k / 8) / (split * 2) >= 32) {
    split *= 2;
  }
  const unsigned grid = unsigned(blocks(split));
  switch (rows) {
    case 1: GemvKernel<1, XT><<<grid, kThreads, 0, stream>>>(w, x, n, k, split, y); break;
    case 2: GemvKernel<2, XT><<<grid, kThreads, 0, stream>>>(w, x, n, k, split, y); break;
    case 3: GemvKernel<3, XT><<<grid, kThreads, 0, stream>>>(w, x, n, k, split, y); break;
    case 4: GemvKernel<4, XT><<<grid, kThreads, 0, stream>>>(w, x, n, k, split, y); break;
    case 5: GemvKernel<5, XT><<<grid, kThreads, 0, stream>>>(w, x, n, k, split, y); break;
    case 6: GemvKernel<6, XT><<<grid, kThreads, 0, stream>>>(w, x, n, k, split, y); break;
    case 7: GemvKernel<7, XT><<<grid, kThreads, 0, stream>>>(w, x, n, k, split, y); break;
    default: GemvKernel<8, XT><<<grid, kThreads, 0, stream>>>(w, x, n, k, split, y); break;
  }
  return CheckLaunch("GemvKernel");
}

absl::Status GemvBf16Cuda(const __nv_bfloat16* w, const __nv_bfloat16* x, int rows, int n, int k,
                          float* y, cudaStream_t stream) {
  return LaunchGemv(w, x, rows, n, k, y, stream);
}

absl::Status GemvBf16Cuda(const __nv_bfloat16* w, const float* x, int rows, int n, int k,
                          float* y, cudaStream_t stream) {
  return LaunchGemv(w, x, rows, n, k, y, stream);
}

absl::Status ArgmaxCuda(const float* logits, int rows, int n, int32_t* out, cudaStream_t stream) {
  if (rows < 0 || n <= 0) return absl::InvalidArgumentError("ArgmaxCuda: bad shape");
  if (rows == 0) return absl::OkStatus();
  ArgmaxKernel<<<rows, 1024, 0, stream>>>(logits, n, out);
  return CheckLaunch("ArgmaxKernel");
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
