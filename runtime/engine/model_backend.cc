#include "runtime/engine/model_backend.h"

#include <cstring>

#include "runtime/core/status.h"

namespace resa {

absl::Status CpuBackend::Forward(std::span<const ForwardChunk> chunks, float* logits) {
  const int64_t rows = CpuModel::NumLogitRows(chunks);
  if (logits == nullptr && rows > 0) {
    scratch_.resize(size_t(rows) * model_.config().vocab_size);
    logits = scratch_.data();
  }
  return model_.Forward(chunks, logits);
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
