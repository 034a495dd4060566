// LSE merge of two partial attention states (sequence parallelism, split combines).
#include <cmath>

#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch.h"

namespace resa::cuda {
namespace {

// One warp per row: every lane reads the old lse_a before lane 0 rewrites it (__syncwarp).
__global__ void MergeStatesKernel(float* o_a, float* lse_a, const float* o_b, const float* lse_b,
                                  int n, int head_dim) {
  detail::AwaitPreviousKernel();
  const size_t row = (size_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= size_t(n)) return;
  const float la = lse_a[row], lb = lse_b[row];
  if (lb == -INFINITY) return;  // b empty: a unchanged (also covers both empty)
  float* oa = o_a + row * head_dim;
  const float* ob = o_b + row * head_dim;
  if (la == -INFINITY) {
    for (int d = lane; d < head_dim; d += 32) oa[d] = ob[d];
  } else {
    const float mx = fmaxf(la, lb);
    const float wa = expf(la - mx), wb = expf(lb - mx);
    const float inv = 1.0f / (wa + wb);
    for (int d = lane; d < head_dim; d += 32) oa[d] = (wa * oa[d] + wb * ob[d]) * inv;
  }
  __syncwarp();
  if (lane == 0) {
    const float mx = fmaxf(la, lb);
    lse_a[row] = la == -INFINITY ? lb : mx + logf(expf(la - mx) + expf(lb - mx));
  }
}

}  // namespace

absl::Status MergeAttentionStatesCuda(float* o_a, float* lse_a, const float* o_b,
                                      const float* lse_b, int n, int head_dim,
                                      cudaStream_t stream) {
  if (o_a == nullptr || lse_a == nullptr || o_b == nullptr || lse_b == nullptr || n < 0 ||
      head_dim <= 0) {
    return absl::InvalidArgumentError("MergeAttentionStatesCuda: null pointer or bad shape");
  }
  if (n == 0) return absl::OkStatus();
  const int threads = 256;
  const size_t blocks = (size_t(n) * 32 + threads - 1) / threads;
  return CudaStatus(LaunchKernel(MergeStatesKernel, dim3(unsigned(blocks)), dim3(threads), 0,
                                 stream, {}, o_a, lse_a, o_b, lse_b, n, head_dim),
                    "launching MergeStatesKernel");
}

}  // namespace resa::cuda
