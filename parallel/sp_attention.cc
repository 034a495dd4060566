#include "parallel/sp_attention.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/selection.h"
#include "runtime/core/status.h"

namespace resa {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

using Candidate = std::pair<float, int32_t>;  // (score, logical block)

// (score desc, block asc): the order of TopBlocks, a strict total order for distinct blocks.
inline bool Better(const Candidate& a, const Candidate& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}

absl::Status CheckHost(const Communicator& comm, std::string_view what) {
  if (comm.buffer_location() != BufferLocation::kHost) {
    return absl::InvalidArgumentError(
        absl::StrCat(comm.Describe(), ": ", AsAbsl(what),
                     " runs on host buffers; this communicator takes ", "device buffers"));
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<int32_t> OwnedBlocks(const SequenceShard& shard, int32_t num_blocks) {
  std::vector<int32_t> out(size_t(shard.NumLocalBlocks(num_blocks)));
  for (size_t j = 0; j < out.size(); ++j) out[j] = shard.GlobalBlock(int32_t(j));
  return out;
}

std::vector<int32_t> ExpandLocalPageTable(const SequenceShard& shard,
                                          const int32_t* local_page_table, int32_t num_blocks) {
  std::vector<int32_t> out(size_t(std::max(num_blocks, 0)), -1);
  for (int32_t b = shard.rank; b < num_blocks; b += shard.size) {
    out[size_t(b)] = local_page_table[shard.LocalIndex(b)];
  }
  return out;
}

void ScoreLocalBlocks(const PagedKvLayer& kv, const float* pooled_q,
                      const int32_t* local_page_table, int32_t num_keys, const SequenceShard& shard,
                      float* scores) {
  const int32_t num_blocks = (num_keys + kPageTokens - 1) / kPageTokens;
  const int32_t m = shard.NumLocalBlocks(num_blocks);
  if (m == 0) return;
  // ScoreBlocks itself over the local pages plus one dummy block: it forces its last block to
  // +inf, which then lands on the dummy, and every real block gets ScoreBlocks' exact arithmetic.
  std::vector<int32_t> table(local_page_table, local_page_table + m);
  table.push_back(local_page_table[0]);
  std::vector<float> tmp(size_t(kv.num_kv_heads) * size_t(m + 1));
  ScoreBlocks(kv, pooled_q, table.data(), (m + 1) * kPageTokens, tmp.data());
  const bool owns_last = shard.Owns(num_blocks - 1);
  for (int h = 0; h < kv.num_kv_heads; ++h) {
    std::copy_n(tmp.data() + size_t(h) * size_t(m + 1), m, scores + size_t(h) * m);
    if (owns_last) scores[size_t(h) * m + m - 1] = std::numeric_limits<float>::infinity();
  }
}

int32_t FirstRoundCandidates(int32_t n, int ranks) {
  if (ranks <= 1 || n <= 0) return n;
  // The global top-n spreads over the ranks like n draws over S bins (block b lives on b mod S):
  // a share of n / S, give or take about sqrt(n / S); 2 sqrt(n) + 4 covers it with room to spare.
  const double k = std::ceil(double(n) / ranks + 2.0 * std::sqrt(double(n)) + 4.0);
  return int32_t(std::min<double>(n, k));
}

namespace {

// One exchange of SelectBlocksAcrossRanks: every rank sends its local top-k of each row
// (k = budget[row]), and every rank derives the global top-n of each row from the union. When a
// rank held more than k blocks of a row and its worst sent candidate lands inside the union's
// top-n, blocks it did not send might belong there too: the row is undecided, *complete is set
// false and the caller repeats with k = n (where the union always covers the global top-n: an
// element of it is in the local top-n of its own rank). Every rank sees the same gathered data,
// so all reach the same verdict. `full` (k = n) skips the check: it always decides.
absl::Status SelectRound(Communicator& sp, std::span<const SelectionRow> rows,
                         std::span<const int32_t> budget, bool full, SelectionScratch& s,
                         bool* complete) {
  auto fail = [&sp](const auto&... parts) {
    return absl::InvalidArgumentError(
        absl::StrCat(sp.Describe(), ": SelectBlocksAcrossRanks: ", parts...));
  };
  // Payload: [rows] then (n, num_local) per row, then k (score bits, block) pairs per row with
  // block -1 padding where a rank holds fewer than k blocks.
  const size_t num_rows = rows.size();
  size_t total_k = 0;
  for (int32_t k : budget) total_k += size_t(k);
  const size_t words = 1 + 2 * num_rows + 2 * total_k;
  s.send.assign(words, 0);
  s.send[0] = int32_t(num_rows);
  int32_t* cand_out = s.send.data() + 1 + 2 * num_rows;
  for (size_t r = 0; r < num_rows; ++r) {
    const SelectionRow& row = rows[r];
    s.send[1 + 2 * r] = row.n;
    s.send[2 + 2 * r] = row.num_local;
    s.candidates.clear();
    for (int32_t j = 0; j < row.num_local; ++j)
      s.candidates.emplace_back(row.scores[j], row.blocks[j]);
    const int32_t k = std::min(budget[r], row.num_local);
    std::nth_element(s.candidates.begin(), s.candidates.begin() + k, s.candidates.end(), Better);
    for (int32_t i = 0; i < budget[r]; ++i) {
      const bool real = i < k;
      *cand_out++ = std::bit_cast<int32_t>(real ? s.candidates[size_t(i)].first : kNegInf);
      *cand_out++ = real ? s.candidates[size_t(i)].second : -1;
    }
  }

  const int ranks = sp.size();
  s.recv.resize(words * size_t(ranks));
  RESA_RETURN_IF_ERROR(sp.AllGather(DataType::kInt32, s.send.data(), s.recv.data(), words));

  auto payload = [&](int rank) { return s.recv.data() + size_t(rank) * words; };
  for (int q = 0; q < ranks; ++q) {
    const int32_t* p = payload(q);
    bool same = p[0] == int32_t(num_rows);
    for (size_t r = 0; same && r < num_rows; ++r) same = p[1 + 2 * r] == rows[r].n;
    if (!same) {
      return fail("rank ", q, " selects over ", p[0], " rows with n = ", p[1],
                  " for the first, this rank over ", num_rows,
                  " rows with n = ", num_rows > 0 ? rows[0].n : 0,
                  " (every rank must pass the same rows and n)");
    }
  }
  *complete = true;
  size_t offset = 1 + 2 * num_rows;
  for (size_t r = 0; r < num_rows; ++r) {
    const SelectionRow& row = rows[r];
    const int32_t k = budget[r];
    int64_t held = 0;
    s.candidates.clear();
    s.truncated.clear();  // worst sent candidate of each rank that held more than k blocks
    for (int q = 0; q < ranks; ++q) {
      const int32_t* p = payload(q);
      held += p[2 + 2 * r];
      const int32_t* src = p + offset;
      const size_t first = s.candidates.size();
      for (int32_t i = 0; i < k; ++i) {
        if (src[2 * i + 1] >= 0) {
          s.candidates.emplace_back(std::bit_cast<float>(src[2 * i]), src[2 * i + 1]);
        }
      }
      // A rank cut off below n sent k real candidates; the max under Better is its worst.
      if (!full && k < row.n && p[2 + 2 * r] > k && k > 0) {
        s.truncated.push_back(
            *std::max_element(s.candidates.begin() + first, s.candidates.end(), Better));
      }
    }
    offset += 2 * size_t(k);
    if (held < row.n) {
      return fail("row ", r, ": n = ", row.n, " but the group holds ", held, " blocks");
    }
    if (row.n == 0) continue;
    if (s.candidates.size() < size_t(row.n)) {  // a truncated rank must fill the gap
      *complete = false;
      continue;
    }
    std::nth_element(s.candidates.begin(), s.candidates.begin() + (row.n - 1),
                     s.candidates.end(), Better);
    const Candidate nth = s.candidates[size_t(row.n - 1)];
    for (const Candidate& worst : s.truncated) {
      if (!Better(nth, worst)) *complete = false;  // worst is inside the union's top-n
    }
    if (!*complete) continue;
    for (int32_t i = 0; i < row.n; ++i) row.out[i] = s.candidates[size_t(i)].second;
    std::sort(row.out, row.out + row.n);
    if (std::adjacent_find(row.out, row.out + row.n) != row.out + row.n) {
      return fail("row ", r, ": two ranks reported the same block; ownership is not disjoint");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status SelectBlocksAcrossRanks(Communicator& sp, std::span<const SelectionRow> rows,
                                     SelectionScratch* scratch) {
  RESA_RETURN_IF_ERROR(CheckHost(sp, "SelectBlocksAcrossRanks"));
  for (const SelectionRow& row : rows) {
    if (row.n < 0 || row.num_local < 0 || (row.num_local > 0 && row.scores == nullptr) ||
        (row.num_local > 0 && row.blocks == nullptr) || (row.n > 0 && row.out == nullptr)) {
      return absl::InvalidArgumentError(
          absl::StrCat(sp.Describe(), ": SelectBlocksAcrossRanks: bad row (n ", row.n,
                       ", local blocks ", row.num_local, ")"));
    }
  }
  SelectionScratch local_scratch;
  SelectionScratch& s = scratch != nullptr ? *scratch : local_scratch;
  // First exchange with the reduced budget when it saves anything; the full one otherwise, or
  // when the reduced one left a row undecided (every rank takes the same branch).
  s.budget.resize(rows.size());
  bool reduced = false;
  for (size_t r = 0; r < rows.size(); ++r) {
    s.budget[r] = FirstRoundCandidates(rows[r].n, sp.size());
    reduced = reduced || s.budget[r] < rows[r].n;
  }
  bool complete = false;
  if (reduced) RESA_RETURN_IF_ERROR(SelectRound(sp, rows, s.budget, false, s, &complete));
  if (complete) return absl::OkStatus();
  for (size_t r = 0; r < rows.size(); ++r) s.budget[r] = rows[r].n;
  return SelectRound(sp, rows, s.budget, true, s, &complete);
}

absl::Status SelectBlocksAcrossRanks(Communicator& sp, const float* local_scores,
                                     std::span<const int32_t> local_blocks, int num_kv_heads,
                                     int32_t n, int32_t* out, SelectionScratch* scratch) {
  if (num_kv_heads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(sp.Describe(), ": SelectBlocksAcrossRanks: num_kv_heads ", num_kv_heads));
  }
  const int32_t num_local = int32_t(local_blocks.size());
  std::vector<SelectionRow> rows(static_cast<size_t>(num_kv_heads));
  for (int h = 0; h < num_kv_heads; ++h) {
    rows[size_t(h)] = {local_scores + size_t(h) * size_t(num_local), local_blocks.data(), num_local,
                       n, out + size_t(h) * size_t(std::max(n, 0))};
  }
  return SelectBlocksAcrossRanks(sp, rows, scratch);
}

int32_t OwnedSelection(const SequenceShard& shard, const int32_t* selected, int num_kv_heads,
                       int32_t n, int32_t num_blocks, std::vector<int32_t>* out) {
  int32_t stride = 0;
  for (int h = 0; h < num_kv_heads; ++h) {
    int32_t c = 0;
    for (int32_t i = 0; i < n; ++i) c += shard.Owns(selected[size_t(h) * n + i]);
    stride = std::max(stride, c);
  }
  out->assign(size_t(num_kv_heads) * size_t(stride), 0);
  for (int h = 0; h < num_kv_heads; ++h) {
    int32_t* dst = out->data() + size_t(h) * stride;
    int32_t c = 0;
    for (int32_t i = 0; i < n; ++i) {
      const int32_t b = selected[size_t(h) * n + i];
      if (shard.Owns(b)) dst[c++] = b;
    }
    std::sort(dst, dst + c);
    for (int32_t pad = 0; c < stride; ++c, ++pad) dst[c] = num_blocks + pad;
  }
  return stride;
}

absl::Status MergeAttentionStatesAcrossRanks(Communicator& sp, float* o, float* lse_ln, int n,
                                             int head_dim, MergeScratch* scratch) {
  RESA_RETURN_IF_ERROR(CheckHost(sp, "MergeAttentionStatesAcrossRanks"));
  if (n < 0 || head_dim < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        sp.Describe(), ": MergeAttentionStatesAcrossRanks: n ", n, ", head_dim ", head_dim));
  }
  const int ranks = sp.size();
  if (ranks == 1) return absl::OkStatus();
  MergeScratch local_scratch;
  MergeScratch& s = scratch != nullptr ? *scratch : local_scratch;
  const size_t d = size_t(head_dim);
  const size_t words = size_t(n) * (d + 1);
  s.send.resize(words);
  std::copy_n(o, size_t(n) * d, s.send.data());
  std::copy_n(lse_ln, size_t(n), s.send.data() + size_t(n) * d);
  s.recv.resize(words * size_t(ranks));
  RESA_RETURN_IF_ERROR(sp.AllGather(DataType::kFloat32, s.send.data(), s.recv.data(), words));

  auto o_of = [&](int r, int i) { return s.recv.data() + size_t(r) * words + size_t(i) * d; };
  auto lse_of = [&](int r, int i) { return s.recv[size_t(r) * words + size_t(n) * d + size_t(i)]; };
  std::vector<double> acc(d);
  for (int i = 0; i < n; ++i) {
    float m = kNegInf;
    for (int r = 0; r < ranks; ++r) m = std::max(m, lse_of(r, i));
    float* oi = o + size_t(i) * d;
    if (m == kNegInf) {
      std::fill_n(oi, d, 0.0f);
      lse_ln[i] = kNegInf;
      continue;
    }
    std::fill(acc.begin(), acc.end(), 0.0);
    double denom = 0.0;
    for (int r = 0; r < ranks; ++r) {
      const float l = lse_of(r, i);
      if (l == kNegInf) continue;
      const double w = std::exp(double(l) - double(m));
      denom += w;
      const float* src = o_of(r, i);
      for (size_t c = 0; c < d; ++c) acc[c] += w * double(src[c]);
    }
    for (size_t c = 0; c < d; ++c) oi[c] = float(acc[c] / denom);
    lse_ln[i] = float(double(m) + std::log(denom));
  }
  return absl::OkStatus();
}

}  // namespace resa
