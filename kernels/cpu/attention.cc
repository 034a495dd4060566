#include "kernels/cpu/attention.h"

#include "kernels/cpu/vec_math.h"

#include <cblas.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace resa {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Calls fn(block) for each logical block a row reads for KV head h.
template <typename Fn>
void ForEachBlock(const AttentionRow& row, int h, Fn&& fn) {
  if (!row.sparse) {
    int32_t nb = (row.num_keys + kPageTokens - 1) / kPageTokens;
    for (int32_t b = 0; b < nb; ++b) fn(b);
  } else {
    const int32_t* list = row.blocks + size_t(h) * row.blocks_stride;
    for (int32_t i = 0; i < row.num_blocks; ++i) fn(list[i]);
  }
}

// Number of entries a row lists for any KV head: its blocks (dense) or its block list (sparse).
inline int32_t NumListed(const AttentionRow& row) {
  return row.sparse ? row.num_blocks : (row.num_keys + kPageTokens - 1) / kPageTokens;
}

// Calls fn(block) for list entries [begin, end) of a row for KV head h.
template <typename Fn>
void ForEachBlockIn(const AttentionRow& row, int h, int32_t begin, int32_t end, Fn&& fn) {
  const int32_t* list = row.sparse ? row.blocks + size_t(h) * row.blocks_stride : nullptr;
  for (int32_t i = begin; i < end; ++i) fn(list != nullptr ? list[i] : i);
}

inline float Dot(const float* a, const float* b, int n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

void PagedAttentionReference(const PagedKvLayer& kv, const AttentionParams& p, const float* q,
                             std::span<const AttentionRow> rows, float* out, float* lse_ln) {
  const int d = kv.head_dim;
  const int group = p.num_heads / kv.num_kv_heads;
  for (size_t r = 0; r < rows.size(); ++r) {
    const AttentionRow& row = rows[r];
    for (int j = 0; j < p.num_heads; ++j) {
      const int h = j / group;
      const float* qj = q + (r * p.num_heads + j) * d;
      float* oj = out + (r * p.num_heads + j) * d;
      std::vector<int32_t> positions;
      ForEachBlock(row, h, [&](int32_t b) {
        for (int t = 0; t < kPageTokens; ++t) {
          int32_t pos = b * kPageTokens + t;
          if (pos < row.num_keys) positions.push_back(pos);
        }
      });
      std::vector<double> scores;
      double m = -std::numeric_limits<double>::infinity();
      for (int32_t pos : positions) {
        const float* k = kv.k_at(row.page_table[pos / kPageTokens], h) + (pos % kPageTokens) * d;
        double s = 0.0;
        for (int i = 0; i < d; ++i) s += double(qj[i]) * double(k[i]);
        s *= p.scale;
        scores.push_back(s);
        m = std::max(m, s);
      }
      std::vector<double> acc(d, 0.0);
      double denom = 0.0;
      for (size_t i = 0; i < positions.size(); ++i) {
        int32_t pos = positions[i];
        const float* v = kv.v_at(row.page_table[pos / kPageTokens], h) + (pos % kPageTokens) * d;
        double w = std::exp(scores[i] - m);
        denom += w;
        for (int c = 0; c < d; ++c) acc[c] += w * double(v[c]);
      }
      for (int c = 0; c < d; ++c) oj[c] = denom > 0 ? float(acc[c] / denom) : 0.0f;
      if (lse_ln != nullptr) {
        lse_ln[r * p.num_heads + j] = denom > 0 ? float(m + std::log(denom)) : kNegInf;
      }
    }
  }
}

void PagedAttention(const PagedKvLayer& kv, const AttentionParams& p, const float* q,
                    std::span<const AttentionRow> rows, float* out, float* lse_ln) {
  const int d = kv.head_dim;
  const int hkv = kv.num_kv_heads;
  const int group = p.num_heads / hkv;
  const int64_t tasks = int64_t(rows.size()) * hkv;
  // Split each (row, KV head) over its blocks when there are fewer tasks than threads can share
  // evenly (one decode row with 2-3 KV heads on 2 threads), then merge the splits by LSE.
  int32_t max_blocks = 0;
  for (const AttentionRow& row : rows) max_blocks = std::max(max_blocks, NumListed(row));
  const int threads = omp_get_max_threads();
  int splits = 1;
  if (tasks < 4 * int64_t(threads)) {
    splits = int((4 * int64_t(threads) + tasks - 1) / std::max<int64_t>(tasks, 1));
    splits = std::max(1, std::min(splits, max_blocks / 8));  // >= 8 blocks per split
  }
  const int64_t work = tasks * splits;
  std::vector<float> part_acc(size_t(work) * group * d), part_m(size_t(work) * group),
      part_l(size_t(work) * group);
#pragma omp parallel
  {
    float s[kPageTokens];
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < work; ++w) {
      const int64_t task = w / splits;
      const int split = int(w % splits);
      const size_t r = size_t(task / hkv);
      const int h = int(task % hkv);
      const AttentionRow& row = rows[r];
      float* acc = part_acc.data() + size_t(w) * group * d;
      float* m = part_m.data() + size_t(w) * group;
      float* l = part_l.data() + size_t(w) * group;
      std::fill(acc, acc + size_t(group) * d, 0.0f);
      std::fill(m, m + group, kNegInf);
      std::fill(l, l + group, 0.0f);
      const int32_t n = NumListed(row);
      const float* qg = q + (r * p.num_heads + size_t(h) * group) * d;
      ForEachBlockIn(row, h, n * split / splits, n * (split + 1) / splits, [&](int32_t b) {
        const int valid = std::min<int32_t>(kPageTokens, row.num_keys - b * kPageTokens);
        if (valid <= 0) return;
        const int32_t page = row.page_table[b];
        const float* kp = kv.k_at(page, h);
        const float* vp = kv.v_at(page, h);
        for (int jj = 0; jj < group; ++jj) {
          const float* qj = qg + size_t(jj) * d;
          float bmax = kNegInf;
          for (int t = 0; t < valid; ++t) {
            s[t] = Dot(qj, kp + size_t(t) * d, d) * p.scale;
            bmax = std::max(bmax, s[t]);
          }
          const float m_new = std::max(m[jj], bmax);
          const float corr = m[jj] == kNegInf ? 0.0f : FastExp(m[jj] - m_new);
          float* a = acc + size_t(jj) * d;
          float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
          for (int t = 0; t < valid; ++t) {
            s[t] = FastExp(s[t] - m_new);
            sum += s[t];
          }
#pragma omp simd
          for (int c = 0; c < d; ++c) a[c] *= corr;
          for (int t = 0; t < valid; ++t) {
            const float wt = s[t];
            const float* vt = vp + size_t(t) * d;
#pragma omp simd
            for (int c = 0; c < d; ++c) a[c] += wt * vt[c];
          }
          l[jj] = l[jj] * corr + sum;
          m[jj] = m_new;
        }
      });
    }
  }
  // Merge the splits of each (row, KV head) and normalise.
  for (int64_t task = 0; task < tasks; ++task) {
    const size_t r = size_t(task / hkv);
    const int h = int(task % hkv);
    for (int jj = 0; jj < group; ++jj) {
      float mx = kNegInf;
      for (int sp = 0; sp < splits; ++sp) mx = std::max(mx, part_m[size_t(task * splits + sp) * group + jj]);
      const size_t head = r * p.num_heads + size_t(h) * group + jj;
      float* o = out + head * d;
      std::fill(o, o + d, 0.0f);
      float total = 0.0f;
      for (int sp = 0; sp < splits; ++sp) {
        const size_t idx = size_t(task * splits + sp) * group + jj;
        if (part_l[idx] <= 0.0f) continue;
        const float wgt = splits == 1 ? 1.0f : std::exp(part_m[idx] - mx);
        total += part_l[idx] * wgt;
        const float* a = part_acc.data() + idx * d;
        for (int c = 0; c < d; ++c) o[c] += a[c] * wgt;
      }
      const float inv = total > 0 ? 1.0f / total : 0.0f;
      for (int c = 0; c < d; ++c) o[c] *= inv;
      if (lse_ln != nullptr) lse_ln[head] = total > 0 ? mx + std::log(total) : kNegInf;
    }
  }
}

namespace {

// PagedChunkAttention over the key positions `keys` (ascending, all < first_num_keys + num_rows
// - 1 + 1): tiles of keys gathered from their pages, GEMM for scores and for P V, online softmax.
// Row r of the chunk sees the keys below first_num_keys + r.
void ChunkAttentionOverKeys(const PagedKvLayer& kv, const AttentionParams& p, const float* q,
                            int num_rows, const int32_t* page_table, int32_t first_num_keys,
                            std::span<const int32_t> keys, float* out, float* lse_ln) {
  const int d = kv.head_dim;
  const int hkv = kv.num_kv_heads;
  const int group = p.num_heads / hkv;
  const int32_t total_keys = int32_t(keys.size());
  const int mrows = group * num_rows;  // (head-in-group, row) pairs
  constexpr int kTile = 512;           // keys per GEMM tile

  std::vector<float> kbuf(size_t(kTile) * d), vbuf(size_t(kTile) * d);
  std::vector<float> qg(size_t(mrows) * d), acc(size_t(mrows) * d);
  std::vector<float> scores(size_t(mrows) * kTile);
  std::vector<float> m(mrows), l(mrows);

  for (int h = 0; h < hkv; ++h) {
    // Gather the group's queries: row index jj * num_rows + r.
    for (int jj = 0; jj < group; ++jj) {
      for (int r = 0; r < num_rows; ++r) {
        const float* src = q + (size_t(r) * p.num_heads + size_t(h) * group + jj) * d;
        std::copy(src, src + d, qg.data() + (size_t(jj) * num_rows + r) * d);
      }
    }
    std::fill(acc.begin(), acc.end(), 0.0f);
    std::fill(m.begin(), m.end(), kNegInf);
    std::fill(l.begin(), l.end(), 0.0f);
    for (int32_t t0 = 0; t0 < total_keys; t0 += kTile) {
      const int n = std::min<int32_t>(kTile, total_keys - t0);
      const int32_t* tile_keys = keys.data() + t0;
      for (int t = 0; t < n; ++t) {
        const int32_t pos = tile_keys[t];
        const int32_t page = page_table[pos / kPageTokens];
        const size_t off = size_t(pos % kPageTokens) * d;
        std::copy(kv.k_at(page, h) + off, kv.k_at(page, h) + off + d, kbuf.data() + size_t(t) * d);
        std::copy(kv.v_at(page, h) + off, kv.v_at(page, h) + off + d, vbuf.data() + size_t(t) * d);
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, mrows, n, d, p.scale, qg.data(), d,
                  kbuf.data(), d, 0.0f, scores.data(), kTile);
#pragma omp parallel for schedule(static)
      for (int i = 0; i < mrows; ++i) {
        const int r = i % num_rows;
        // Keys of this tile row i sees: a prefix, as the keys ascend.
        const int visible =
            int(std::lower_bound(tile_keys, tile_keys + n, first_num_keys + r) - tile_keys);
        float* srow = scores.data() + size_t(i) * kTile;
        if (visible <= 0) {
          std::fill(srow, srow + n, 0.0f);
          continue;
        }
        float tmax = kNegInf;
        for (int t = 0; t < visible; ++t) tmax = std::max(tmax, srow[t]);
        const float m_new = std::max(m[i], tmax);
        const float corr = m[i] == kNegInf ? 0.0f : FastExp(m[i] - m_new);
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int t = 0; t < visible; ++t) {
          srow[t] = FastExp(srow[t] - m_new);
          sum += srow[t];
        }
        std::fill(srow + visible, srow + n, 0.0f);
        float* a = acc.data() + size_t(i) * d;
        for (int c = 0; c < d; ++c) a[c] *= corr;
        l[i] = l[i] * corr + sum;
        m[i] = m_new;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, mrows, d, n, 1.0f, scores.data(),
                  kTile, vbuf.data(), d, 1.0f, acc.data(), d);
    }
    for (int jj = 0; jj < group; ++jj) {
      for (int r = 0; r < num_rows; ++r) {
        const int i = jj * num_rows + r;
        const size_t head = size_t(r) * p.num_heads + size_t(h) * group + jj;
        const float inv = l[i] > 0 ? 1.0f / l[i] : 0.0f;
        for (int c = 0; c < d; ++c) out[head * d + c] = acc[size_t(i) * d + c] * inv;
        if (lse_ln != nullptr) lse_ln[head] = l[i] > 0 ? m[i] + std::log(l[i]) : kNegInf;
      }
    }
  }
}

}  // namespace

void PagedChunkAttention(const PagedKvLayer& kv, const AttentionParams& p, const float* q,
                         int num_rows, const int32_t* page_table, int32_t first_num_keys,
                         float* out, float* lse_ln) {
  const int32_t total_keys = std::max(0, first_num_keys + num_rows - 1);  // the last row's keys
  std::vector<int32_t> keys(static_cast<size_t>(total_keys));
  std::iota(keys.begin(), keys.end(), 0);
  ChunkAttentionOverKeys(kv, p, q, num_rows, page_table, first_num_keys, keys, out, lse_ln);
}

void PagedChunkAttention(const PagedKvLayer& kv, const AttentionParams& p, const float* q,
                         int num_rows, const int32_t* page_table, int32_t first_num_keys,
                         std::span<const int32_t> blocks, float* out, float* lse_ln) {
  const int32_t total_keys = first_num_keys + num_rows - 1;
  std::vector<int32_t> keys;
  keys.reserve(blocks.size() * kPageTokens);
  for (int32_t b : blocks) {
    for (int32_t pos = b * kPageTokens; pos < std::min((b + 1) * kPageTokens, total_keys); ++pos) {
      keys.push_back(pos);
    }
  }
  ChunkAttentionOverKeys(kv, p, q, num_rows, page_table, first_num_keys, keys, out, lse_ln);
}

void MergeAttentionStates(float* o_a, float* lse_a, const float* o_b, const float* lse_b, int n,
                          int head_dim) {
  for (int i = 0; i < n; ++i) {
    const float la = lse_a[i], lb = lse_b[i];
    if (lb == kNegInf) continue;  // b empty: a unchanged (also covers both empty)
    float* oa = o_a + size_t(i) * head_dim;
    const float* ob = o_b + size_t(i) * head_dim;
    if (la == kNegInf) {
      std::copy(ob, ob + head_dim, oa);
      lse_a[i] = lb;
      continue;
    }
    const float mx = std::max(la, lb);
    const float wa = std::exp(la - mx), wb = std::exp(lb - mx);
    const float inv = 1.0f / (wa + wb);
    for (int c = 0; c < head_dim; ++c) oa[c] = (wa * oa[c] + wb * ob[c]) * inv;
    lse_a[i] = mx + std::log(wa + wb);
  }
}

}  // namespace resa
