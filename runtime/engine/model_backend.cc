#include "runtime/engine/model_backend.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "runtime/core/status.h"

namespace resa {

absl::Status CpuBackend::Forward(std::span<const ForwardChunk> chunks, float* logits) {
  const int64_t rows = CpuModel::NumLogitRows(chunks);
  if (rows == 0) return model_.Forward(chunks, logits);
  // The logits land in scratch_ (kept for Sample), then in the caller's destination.
  const size_t n = size_t(rows) * size_t(model_.config().vocab_size);
  scratch_rows_ = 0;
  scratch_.resize(n);
  RESA_RETURN_IF_ERROR(model_.Forward(chunks, scratch_.data()));
  scratch_rows_ = rows;
  if (logits != nullptr) std::memcpy(logits, scratch_.data(), n * sizeof(float));
  return absl::OkStatus();
}

absl::Status CpuBackend::Sample(std::span<const RowSampling> rows, int32_t* tokens) {
  const int vocab = model_.config().vocab_size;
  for (const RowSampling& r : rows) {
    if (r.row < 0 || r.row >= scratch_rows_) {
      return absl::InvalidArgumentError(absl::StrCat("Sample: logits row ", r.row,
                                                     " out of range; the last forward produced ",
                                                     scratch_rows_));
    }
    RESA_RETURN_IF_ERROR(r.params.Validate());
    if (!(r.u >= 0.0 && r.u < 1.0)) {
      return absl::InvalidArgumentError(absl::StrCat("Sample: u must be in [0, 1), got ", r.u));
    }
  }
  for (size_t i = 0; i < rows.size(); ++i) {
    tokens[i] = SampleWithUniform(scratch_.data() + size_t(rows[i].row) * size_t(vocab), vocab,
                                  rows[i].params, rows[i].u, &cand_);
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::CopySequence(const SequenceKv& from, SequenceKv& to) {
  RESA_RETURN_IF_ERROR(cache_.Reserve(to, from.length));
  to.length = from.length;
  const ModelConfig& c = model_.config();
  // This rank's pages (its blocks and KV heads under TP x SP): every rank copies its own part.
  for (int l = 0; l < c.num_layers; ++l) {
    PagedKvLayer kv = cache_.layer(l);
    for (size_t b = 0; b < to.page_table.size(); ++b) {
      const int32_t src = from.page_table[b], dst = to.page_table[b];
      std::memcpy(kv.k_at(dst, 0), kv.k_at(src, 0), kv.page_elems() * sizeof(float));
      std::memcpy(kv.v_at(dst, 0), kv.v_at(src, 0), kv.page_elems() * sizeof(float));
      std::memcpy(kv.min_at(dst, 0), kv.min_at(src, 0),
                  size_t(kv.num_kv_heads) * 2 * kv.head_dim * sizeof(float));
    }
  }
  return absl::OkStatus();
}

}  // namespace resa
