#include "runtime/engine/cpu_weights.h"

#include <algorithm>
#include <atomic>
#include <string>

#include "absl/strings/str_cat.h"
#include "runtime/core/status.h"

namespace resa {
namespace {

// A range of rows of one weight and where they go. Big weights are split so the load balances
// across threads and the progress bar moves smoothly. A column slice [col_begin, col_begin +
// dst_cols) of the source rows is kept when dst_cols < the weight's columns (row-parallel shards).
struct Job {
  std::string name;
  float* dst;
  int64_t row_begin, row_end;
  int64_t src_cols, col_begin, dst_cols;
  uint64_t stored_bytes;  // of these rows
};

absl::Status Alloc(FloatBuffer& b, size_t n) {
  if (!b.resize(n)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("out of memory allocating ", n * sizeof(float) / 1e6, " MB of weights"));
  }
  return absl::OkStatus();
}

constexpr int64_t kJobElems = int64_t(4) << 20;

// Rows [row_begin, row_begin + rows) and columns [col_begin, col_begin + cols) of a weight of
// shape [expect_rows, expect_cols] go to storage + offset, row-major with `cols` per row.
struct Slice {
  int64_t row_begin = 0, rows = -1;  // -1: all rows
  int64_t col_begin = 0, cols = -1;  // -1: all columns
};

absl::Status AddJob(const WeightSource& src, const std::string& name, int64_t expect_rows,
                    int64_t expect_cols, FloatBuffer& storage, size_t offset,
                    std::vector<Job>& jobs, Slice slice = {}) {
  const WeightInfo* info = src.Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(absl::StrCat(src.path(), ": missing weight ", name));
  }
  if (info->rows() != expect_rows || info->cols() != expect_cols) {
    return absl::InvalidArgumentError(
        absl::StrCat(src.path(), ": weight ", name, " has shape [", info->rows(), ", ",
                     info->cols(), "], expected [", expect_rows, ", ", expect_cols, "]"));
  }
  const int64_t rows = slice.rows < 0 ? expect_rows : slice.rows;
  const int64_t cols = slice.cols < 0 ? expect_cols : slice.cols;
  const int64_t step = std::max<int64_t>(1, kJobElems / std::max<int64_t>(1, expect_cols));
  for (int64_t r = 0; r < rows; r += step) {
    const int64_t end = std::min(rows, r + step);
    jobs.push_back(Job{name, storage.data() + offset + size_t(r) * cols, slice.row_begin + r,
                       slice.row_begin + end, expect_cols, slice.col_begin, cols,
                       info->stored_bytes * uint64_t(end - r) / uint64_t(expect_rows)});
  }
  return absl::OkStatus();
}

absl::Status RunJob(const WeightSource& source, const Job& j) {
  if (j.dst_cols == j.src_cols) return source.ReadRowsF32(j.name, j.row_begin, j.row_end, j.dst);
  std::vector<float> rows(size_t(j.row_end - j.row_begin) * j.src_cols);
  RESA_RETURN_IF_ERROR(source.ReadRowsF32(j.name, j.row_begin, j.row_end, rows.data()));
  for (int64_t r = 0; r < j.row_end - j.row_begin; ++r) {
    std::copy_n(rows.data() + size_t(r) * j.src_cols + j.col_begin, j.dst_cols,
                j.dst + size_t(r) * j.dst_cols);
  }
  return absl::OkStatus();
}

}  // namespace

uint64_t CpuWeights::DecodeBytes() const {
  uint64_t n = final_norm.size() + uint64_t(shard.vocab_size) * config.hidden_size;
  for (const auto& l : layers) {
    n += l.input_norm.size() + l.qkv.size() + l.qkv_bias.size() + l.o.size() + l.post_norm.size() +
         l.gate_up.size() + l.down.size();
  }
  return n * sizeof(float);
}

uint64_t CpuWeights::TotalBytes() const {
  // The embedding table is held whole; when tied, DecodeBytes already counted the local rows.
  const uint64_t tied_rows = lm_head.empty() ? uint64_t(shard.vocab_size) * config.hidden_size : 0;
  return DecodeBytes() + (embed.size() - tied_rows) * sizeof(float);
}

absl::StatusOr<std::unique_ptr<CpuWeights>> LoadCpuWeights(const WeightSource& source,
                                                           const ProgressFn& progress) {
  return LoadCpuWeights(source, FullTpShard(source.config()), progress);
}

absl::StatusOr<std::unique_ptr<CpuWeights>> LoadCpuWeights(const WeightSource& source,
                                                           const TpShard& shard,
                                                           const ProgressFn& progress) {
  auto w = std::make_unique<CpuWeights>();
  const ModelConfig& c = source.config();
  RESA_RETURN_IF_ERROR(c.Validate(source.path()));
  w->config = c;
  w->shard = shard;
  const int64_t hid = c.hidden_size, inter = c.intermediate_size, d = c.head_dim;
  const int64_t qd = c.q_dim(), kvd = c.kv_dim();
  // Local extents: q rows of the local heads, k/v rows of the local KV heads, intermediate range.
  const int64_t lq = shard.num_heads * d, lkv = shard.num_kv_heads * d, li = shard.inter_size;
  const Slice q_rows{shard.head_begin * d, lq}, kv_rows{shard.kv_head_begin * d, lkv};
  const Slice inter_rows{shard.inter_begin, li};
  const Slice o_cols{0, -1, shard.head_begin * d, lq}, down_cols{0, -1, shard.inter_begin, li};
  std::vector<Job> jobs;

  RESA_RETURN_IF_ERROR(Alloc(w->embed, size_t(c.vocab_size) * hid));
  RESA_RETURN_IF_ERROR(
      AddJob(source, "model.embed_tokens.weight", c.vocab_size, hid, w->embed, 0, jobs));
  RESA_RETURN_IF_ERROR(Alloc(w->final_norm, hid));
  RESA_RETURN_IF_ERROR(AddJob(source, "model.norm.weight", 1, hid, w->final_norm, 0, jobs));
  if (!c.tie_word_embeddings) {
    RESA_RETURN_IF_ERROR(Alloc(w->lm_head, size_t(shard.vocab_size) * hid));
    RESA_RETURN_IF_ERROR(AddJob(source, "lm_head.weight", c.vocab_size, hid, w->lm_head, 0, jobs,
                                Slice{shard.vocab_begin, shard.vocab_size}));
  }
  w->layers.resize(c.num_layers);
  for (int i = 0; i < c.num_layers; ++i) {
    CpuLayerWeights& l = w->layers[i];
    const std::string p = absl::StrCat("model.layers.", i, ".");
    RESA_RETURN_IF_ERROR(Alloc(l.input_norm, hid));
    RESA_RETURN_IF_ERROR(Alloc(l.post_norm, hid));
    RESA_RETURN_IF_ERROR(Alloc(l.qkv, size_t(lq + 2 * lkv) * hid));
    RESA_RETURN_IF_ERROR(Alloc(l.o, size_t(hid) * lq));
    RESA_RETURN_IF_ERROR(Alloc(l.gate_up, size_t(2 * li) * hid));
    RESA_RETURN_IF_ERROR(Alloc(l.down, size_t(hid) * li));
    RESA_RETURN_IF_ERROR(
        AddJob(source, p + "input_layernorm.weight", 1, hid, l.input_norm, 0, jobs));
    RESA_RETURN_IF_ERROR(
        AddJob(source, p + "post_attention_layernorm.weight", 1, hid, l.post_norm, 0, jobs));
    RESA_RETURN_IF_ERROR(
        AddJob(source, p + "self_attn.q_proj.weight", qd, hid, l.qkv, 0, jobs, q_rows));
    RESA_RETURN_IF_ERROR(AddJob(source, p + "self_attn.k_proj.weight", kvd, hid, l.qkv,
                                size_t(lq) * hid, jobs, kv_rows));
    RESA_RETURN_IF_ERROR(AddJob(source, p + "self_attn.v_proj.weight", kvd, hid, l.qkv,
                                size_t(lq + lkv) * hid, jobs, kv_rows));
    if (c.attention_bias) {
      // A bias is one row: its slices are column slices.
      RESA_RETURN_IF_ERROR(Alloc(l.qkv_bias, lq + 2 * lkv));
      RESA_RETURN_IF_ERROR(AddJob(source, p + "self_attn.q_proj.bias", 1, qd, l.qkv_bias, 0, jobs,
                                  Slice{0, -1, q_rows.row_begin, lq}));
      RESA_RETURN_IF_ERROR(AddJob(source, p + "self_attn.k_proj.bias", 1, kvd, l.qkv_bias, lq, jobs,
                                  Slice{0, -1, kv_rows.row_begin, lkv}));
      RESA_RETURN_IF_ERROR(AddJob(source, p + "self_attn.v_proj.bias", 1, kvd, l.qkv_bias, lq + lkv,
                                  jobs, Slice{0, -1, kv_rows.row_begin, lkv}));
    }
    RESA_RETURN_IF_ERROR(
        AddJob(source, p + "self_attn.o_proj.weight", hid, qd, l.o, 0, jobs, o_cols));
    RESA_RETURN_IF_ERROR(
        AddJob(source, p + "mlp.gate_proj.weight", inter, hid, l.gate_up, 0, jobs, inter_rows));
    RESA_RETURN_IF_ERROR(AddJob(source, p + "mlp.up_proj.weight", inter, hid, l.gate_up,
                                size_t(li) * hid, jobs, inter_rows));
    RESA_RETURN_IF_ERROR(
        AddJob(source, p + "mlp.down_proj.weight", hid, inter, l.down, 0, jobs, down_cols));
  }

  uint64_t total = 0;
  for (const Job& j : jobs) total += j.stored_bytes;
  std::atomic<uint64_t> done{0};
  std::atomic<bool> failed{false};
  std::vector<absl::Status> errors(jobs.size());
  const int64_t njobs = static_cast<int64_t>(jobs.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < njobs; ++i) {
    if (failed.load()) continue;
    const Job& j = jobs[i];
    errors[i] = RunJob(source, j);
    if (!errors[i].ok()) failed = true;
    const uint64_t now = done.fetch_add(j.stored_bytes) + j.stored_bytes;
    if (progress) {
#pragma omp critical(resa_load_progress)
      progress(now, total);
    }
  }
  for (const absl::Status& st : errors) RESA_RETURN_IF_ERROR(st);
  return w;
}

}  // namespace resa
