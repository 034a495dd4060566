#include "kernels/cpu/selection.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numeric>
#include <vector>

namespace resa {

void WriteTokenKv(const PagedKvLayer& kv, int32_t page, int slot, const float* k, const float* v) {
  const int d = kv.head_dim;
  for (int h = 0; h < kv.num_kv_heads; ++h) {
    const float* kh = k + size_t(h) * d;
    std::copy(kh, kh + d, kv.k_at(page, h) + size_t(slot) * d);
    std::copy(v + size_t(h) * d, v + size_t(h + 1) * d, kv.v_at(page, h) + size_t(slot) * d);
    float* mn = kv.min_at(page, h);
    float* mx = kv.max_at(page, h);
    if (slot == 0) {
      std::copy(kh, kh + d, mn);
      std::copy(kh, kh + d, mx);
    } else {
      for (int i = 0; i < d; ++i) {
        mn[i] = std::min(mn[i], kh[i]);
        mx[i] = std::max(mx[i], kh[i]);
      }
    }
  }
}

void RecomputeSummary(const PagedKvLayer& kv, int32_t page, int valid_tokens) {
  const int d = kv.head_dim;
  for (int h = 0; h < kv.num_kv_heads; ++h) {
    const float* kp = kv.k_at(page, h);
    float* mn = kv.min_at(page, h);
    float* mx = kv.max_at(page, h);
    if (valid_tokens <= 0) {
      std::fill(mn, mn + d, std::numeric_limits<float>::infinity());
      std::fill(mx, mx + d, -std::numeric_limits<float>::infinity());
      continue;
    }
    std::copy(kp, kp + d, mn);
    std::copy(kp, kp + d, mx);
    for (int t = 1; t < valid_tokens; ++t) {
      for (int i = 0; i < d; ++i) {
        mn[i] = std::min(mn[i], kp[size_t(t) * d + i]);
        mx[i] = std::max(mx[i], kp[size_t(t) * d + i]);
      }
    }
  }
}

int32_t NumSelectedBlocks(int32_t num_blocks, float ratio, int32_t min_blocks) {
  if (ratio >= 1.0f) return num_blocks;
  const float prod = ratio * static_cast<float>(num_blocks);
  int32_t n = static_cast<int32_t>(std::ceil(prod));
  n = std::max(n, std::min(num_blocks, min_blocks));
  return std::min(n, num_blocks);
}

void ScoreBlocks(const PagedKvLayer& kv, const float* pooled_q, const int32_t* page_table,
                 int32_t num_keys, float* scores) {
  const int d = kv.head_dim;
  const int32_t m = (num_keys + kPageTokens - 1) / kPageTokens;
  const int64_t tasks = int64_t(kv.num_kv_heads) * m;
#pragma omp parallel for schedule(static) if (tasks > 256)
  for (int64_t task = 0; task < tasks; ++task) {
    const int h = int(task / m);
    const int32_t b = int32_t(task % m);
    const float* q = pooled_q + size_t(h) * d;
    const float* mn = kv.min_at(page_table[b], h);
    const float* mx = kv.max_at(page_table[b], h);
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < d; ++i) s += std::max(q[i] * mx[i], q[i] * mn[i]);
    scores[size_t(h) * m + b] = s;
  }
  if (m > 0) {
    for (int h = 0; h < kv.num_kv_heads; ++h) {
      scores[size_t(h) * m + m - 1] = std::numeric_limits<float>::infinity();
    }
  }
}

namespace {
inline bool Better(const float* s, int32_t a, int32_t b) {
  return s[a] > s[b] || (s[a] == s[b] && a < b);
}
}  // namespace

void TopBlocks(const float* scores, int num_kv_heads, int32_t num_blocks, int32_t n,
               int32_t* out) {
  std::vector<int32_t> idx(num_blocks);
  for (int h = 0; h < num_kv_heads; ++h) {
    const float* s = scores + size_t(h) * num_blocks;
    std::iota(idx.begin(), idx.end(), 0);
    if (n < num_blocks) {
      std::nth_element(idx.begin(), idx.begin() + n, idx.end(),
                       [s](int32_t a, int32_t b) { return Better(s, a, b); });
    }
    std::sort(idx.begin(), idx.begin() + n);
    std::copy(idx.begin(), idx.begin() + n, out + size_t(h) * n);
  }
}

void TopBlocksReference(const float* scores, int num_kv_heads, int32_t num_blocks, int32_t n,
                        int32_t* out) {
  for (int h = 0; h < num_kv_heads; ++h) {
    const float* s = scores + size_t(h) * num_blocks;
    std::vector<std::pair<float, int32_t>> all;
    for (int32_t b = 0; b < num_blocks; ++b) all.push_back({s[b], b});
    std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;
    });
    std::vector<int32_t> top;
    for (int32_t i = 0; i < n; ++i) top.push_back(all[i].second);
    std::sort(top.begin(), top.end());
    std::copy(top.begin(), top.end(), out + size_t(h) * n);
  }
}

}  // namespace resa
