#include "runtime/engine/cpu_weights.h"

#include <atomic>
#include <string>

#include "absl/strings/str_cat.h"
#include "runtime/core/status.h"

namespace resa {
namespace {

// One destination region and the weight rows that fill it.
struct Job {
  std::string name;
  float* dst;
  int64_t rows;
  uint64_t stored_bytes;
};

absl::Status AddJob(const WeightSource& src, const std::string& name, int64_t expect_rows,
                    int64_t expect_cols, std::vector<float>& storage, size_t offset,
                    std::vector<Job>& jobs) {
  const WeightInfo* info = src.Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(absl::StrCat(src.path(), ": missing weight ", name));
  }
  if (info->rows() != expect_rows || info->cols() != expect_cols) {
    return absl::InvalidArgumentError(absl::StrCat(src.path(), ": weight ", name, " has shape [",
                                                   info->rows(), ", ", info->cols(),
                                                   "], expected [", expect_rows, ", ",
                                                   expect_cols, "]"));
  }
  jobs.push_back(Job{name, storage.data() + offset, expect_rows, info->stored_bytes});
  return absl::OkStatus();
}

}  // namespace

uint64_t CpuWeights::DecodeBytes() const {
  uint64_t n = final_norm.size() + (lm_head.empty() ? embed.size() : lm_head.size());
  for (const auto& l : layers) {
    n += l.input_norm.size() + l.qkv.size() + l.qkv_bias.size() + l.o.size() + l.post_norm.size() +
         l.gate_up.size() + l.down.size();
  }
  return n * sizeof(float);
}

uint64_t CpuWeights::TotalBytes() const {
  return DecodeBytes() + (lm_head.empty() ? 0 : embed.size() * sizeof(float));
}

absl::StatusOr<std::unique_ptr<CpuWeights>> LoadCpuWeights(const WeightSource& source,
                                                           const ProgressFn& progress) {
  auto w = std::make_unique<CpuWeights>();
  const ModelConfig& c = source.config();
  RESA_RETURN_IF_ERROR(c.Validate(source.path()));
  w->config = c;
  const int64_t hid = c.hidden_size, inter = c.intermediate_size;
  const int64_t qd = c.q_dim(), kvd = c.kv_dim();
  std::vector<Job> jobs;

  w->embed.resize(size_t(c.vocab_size) * hid);
  RESA_RETURN_IF_ERROR(
      AddJob(source, "model.embed_tokens.weight", c.vocab_size, hid, w->embed, 0, jobs));
  w->final_norm.resize(hid);
  RESA_RETURN_IF_ERROR(AddJob(source, "model.norm.weight", 1, hid, w->final_norm, 0, jobs));
  if (!c.tie_word_embeddings) {
    w->lm_head.resize(size_t(c.vocab_size) * hid);
    RESA_RETURN_IF_ERROR(AddJob(source, "lm_head.weight", c.vocab_size, hid, w->lm_head, 0, jobs));
  }
  w->layers.resize(c.num_layers);
  for (int i = 0; i < c.num_layers; ++i) {
    CpuLayerWeights& l = w->layers[i];
    const std::string p = absl::StrCat("model.layers.", i, ".");
    l.input_norm.resize(hid);
    l.post_norm.resize(hid);
    l.qkv.resize(size_t(qd + 2 * kvd) * hid);
    l.o.resize(size_t(hid) * qd);
    l.gate_up.resize(size_t(2 * inter) * hid);
    l.down.resize(size_t(hid) * inter);
    RESA_RETURN_IF_ERROR(AddJob(source, p + "input_layernorm.weight", 1, hid, l.input_norm, 0, jobs));
    RESA_RETURN_IF_ERROR(
        AddJob(source, p + "post_attention_layernorm.weight", 1, hid, l.post_norm, 0, jobs));
    RESA_RETURN_IF_ERROR(AddJob(source, p + "self_attn.q_proj.weight", qd, hid, l.qkv, 0, jobs));
    RESA_RETURN_IF_ERROR(
        AddJob(source, p + "self_attn.k_proj.weight", kvd, hid, l.qkv, size_t(qd) * hid, jobs));
    RESA_RETURN_IF_ERROR(AddJob(source, p + "self_attn.v_proj.weight", kvd, hid, l.qkv,
                                size_t(qd + kvd) * hid, jobs));
    if (c.attention_bias) {
      l.qkv_bias.resize(qd + 2 * kvd);
      RESA_RETURN_IF_ERROR(AddJob(source, p + "self_attn.q_proj.bias", 1, qd, l.qkv_bias, 0, jobs));
      RESA_RETURN_IF_ERROR(
          AddJob(source, p + "self_attn.k_proj.bias", 1, kvd, l.qkv_bias, qd, jobs));
      RESA_RETURN_IF_ERROR(
          AddJob(source, p + "self_attn.v_proj.bias", 1, kvd, l.qkv_bias, qd + kvd, jobs));
    }
    RESA_RETURN_IF_ERROR(AddJob(source, p + "self_attn.o_proj.weight", hid, qd, l.o, 0, jobs));
    RESA_RETURN_IF_ERROR(AddJob(source, p + "mlp.gate_proj.weight", inter, hid, l.gate_up, 0, jobs));
    RESA_RETURN_IF_ERROR(
        AddJob(source, p + "mlp.up_proj.weight", inter, hid, l.gate_up, size_t(inter) * hid, jobs));
    RESA_RETURN_IF_ERROR(AddJob(source, p + "mlp.down_proj.weight", hid, inter, l.down, 0, jobs));
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
    errors[i] = source.ReadRowsF32(j.name, 0, j.rows, j.dst);
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
