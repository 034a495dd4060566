#include "runtime/engine/decoder.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/selection.h"
#include "runtime/core/status.h"
#include "runtime/core/sysinfo.h"

namespace resa {

absl::StatusOr<DecodeMode> ParseDecodeMode(std::string_view name) {
  if (name == "dense") return DecodeMode::kDense;
  if (name == "sparse") return DecodeMode::kSparse;
  if (name == "resa") return DecodeMode::kResa;
  return absl::InvalidArgumentError(
      absl::StrCat("--mode must be dense, sparse or resa, got '", std::string(name), "'"));
}

const char* DecodeModeName(DecodeMode mode) {
  switch (mode) {
    case DecodeMode::kDense:
      return "dense";
    case DecodeMode::kSparse:
      return "sparse";
    case DecodeMode::kResa:
      return "resa";
  }
  return "?";
}

absl::Status ResaOptions::Validate() const {
  if (!(sparse_ratio > 0.0f) || !std::isfinite(sparse_ratio)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--sparse-ratio must be a number > 0 (1 = dense), got ", sparse_ratio));
  }
  if (min_blocks < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--min-blocks must be >= 1, got ", min_blocks));
  }
  if (mode == DecodeMode::kResa && rectify_every < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--rectify-every must be >= 1 in resa mode (use --mode sparse for none), got ",
                     rectify_every));
  }
  return absl::OkStatus();
}

Decoder::Decoder(CpuModel& model, KvCache& cache)
    : owned_backend_(std::make_unique<CpuBackend>(model, cache)),
      backend_(*owned_backend_),
      cpu_model_(&model) {}

Decoder::~Decoder() {
  for (auto& s : seqs_) {
    if (!s->finished) backend_.Release(s->kv);
  }
}

std::unique_ptr<Decoder::Seq> Decoder::NewSeq(const ResaOptions& options) const {
  auto s = std::make_unique<Seq>();
  s->options = options;
  s->sparse = SparseAttention{options.sparse_ratio, options.min_blocks};
  s->logits.assign(size_t(backend_.config().vocab_size), 0.0f);
  return s;
}

absl::StatusOr<int> Decoder::Adopt(SequenceKv kv, const ResaOptions& options) {
  absl::Status st = options.Validate();
  if (st.ok() && kv.length <= 0) {
    st = absl::InvalidArgumentError("Adopt: the sequence holds no tokens");
  }
  if (!st.ok()) {
    backend_.Release(kv);  // the pages were handed over: do not leak them
    return st;
  }
  auto s = NewSeq(options);
  s->report.prompt_tokens = kv.length;
  s->kv = std::move(kv);
  seqs_.push_back(std::move(s));
  return int(seqs_.size() - 1);
}

absl::StatusOr<int> Decoder::Start(std::span<const int32_t> prompt, const ResaOptions& options,
                                   int prefill_chunk) {
  RESA_RETURN_IF_ERROR(options.Validate());
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  if (prefill_chunk < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--prefill-chunk must be >= 0 (0: the backend's default), got ", prefill_chunk));
  }
  if (prefill_chunk == 0) prefill_chunk = backend_.prefill_chunk();
  auto s = NewSeq(options);
  s->report.prompt_tokens = int32_t(prompt.size());
  Stopwatch sw;
  for (size_t start = 0; start < prompt.size(); start += size_t(prefill_chunk)) {
    const size_t n = std::min(prompt.size() - start, size_t(prefill_chunk));
    const bool last = start + n == prompt.size();
    ForwardChunk chunk{&s->kv, prompt.subspan(start, n),
                       last ? LogitsMode::kLast : LogitsMode::kNone};
    absl::Status st = backend_.Forward({&chunk, 1}, s->logits.data());
    if (!st.ok()) {
      backend_.Release(s->kv);
      return st;
    }
  }
  prefill_seconds_ += sw.Seconds();
  seqs_.push_back(std::move(s));
  return int(seqs_.size() - 1);
}

absl::StatusOr<int> Decoder::Fork(int id, const ResaOptions& options) {
  RESA_RETURN_IF_ERROR(options.Validate());
  const Seq& src = *seqs_.at(id);
  auto s = std::make_unique<Seq>(src);
  s->options = options;
  s->sparse = SparseAttention{options.sparse_ratio, options.min_blocks};
  s->kv = SequenceKv{};
  RESA_RETURN_IF_ERROR(backend_.CopySequence(src.kv, s->kv));
  seqs_.push_back(std::move(s));
  return int(seqs_.size() - 1);
}

void Decoder::Finish(int id) {
  Seq& s = *seqs_.at(id);
  if (!s.finished) backend_.Release(s.kv);
  s.finished = true;
  // A server finishes sequences forever: keep only the report.
  s.logits = {};
  s.fed = {};
}

absl::Status Decoder::Step(std::span<const Feed> feeds) {
  if (feeds.empty()) return absl::OkStatus();
  std::vector<ForwardChunk> chunks;
  chunks.reserve(feeds.size());
  for (const Feed& f : feeds) {
    if (f.id < 0 || size_t(f.id) >= seqs_.size() || seqs_[f.id]->finished) {
      return absl::InvalidArgumentError(absl::StrCat("no running sequence ", f.id));
    }
    Seq& s = *seqs_[f.id];
    ForwardChunk ch{&s.kv, {&f.token, 1}, LogitsMode::kLast};
    if (s.options.mode != DecodeMode::kDense) ch.sparse = &s.sparse;
    chunks.push_back(ch);
  }
  const int vocab = backend_.config().vocab_size;
  if (host_logits_) step_logits_.resize(feeds.size() * size_t(vocab));
  Stopwatch sw;
  RESA_RETURN_IF_ERROR(backend_.Forward(chunks, host_logits_ ? step_logits_.data() : nullptr));
  step_seconds_ += sw.Seconds();

  const ModelConfig& c = backend_.config();
  std::vector<int> due;
  for (size_t i = 0; i < feeds.size(); ++i) {
    Seq& s = *seqs_[feeds[i].id];
    if (host_logits_) std::copy_n(step_logits_.data() + i * vocab, vocab, s.logits.data());
    s.fed.push_back(feeds[i].token);
    s.unrectified++;
    s.report.decode_steps++;
    const int32_t m = (s.kv.length + kPageTokens - 1) / kPageTokens;
    int32_t n = m;
    if (s.options.mode != DecodeMode::kDense) {
      n = std::min(m, NumSelectedBlocks(m, s.sparse.ratio, s.sparse.min_blocks));
    }
    s.report.blocks_read += int64_t(n) * c.num_layers * c.num_kv_heads;
    s.report.blocks_total += int64_t(m) * c.num_layers * c.num_kv_heads;
    if (n < m) {
      s.report.sparse_steps++;
      s.sparse_since_rectify = true;
    }
    if (schedule_ == Schedule::kAutomatic && s.options.mode == DecodeMode::kResa &&
        s.unrectified >= s.options.rectify_every) {
      due.push_back(feeds[i].id);
    }
  }
  return Rectify(due);
}

absl::Status Decoder::Rectify(std::span<const int> ids) {
  std::vector<ForwardChunk> chunks;
  std::vector<int> run;
  for (int id : ids) {
    if (!running(id)) return absl::InvalidArgumentError(absl::StrCat("no running sequence ", id));
    Seq& s = *seqs_[id];
    // Steps that read every block already produced dense K/V: nothing to rewrite.
    if (s.unrectified == 0 || !s.sparse_since_rectify) {
      s.unrectified = 0;
      continue;
    }
    ForwardChunk ch{&s.kv, std::span<const int32_t>(s.fed).last(size_t(s.unrectified)),
                    LogitsMode::kNone};
    ch.start = s.kv.length - s.unrectified;
    chunks.push_back(ch);
    run.push_back(id);
  }
  if (chunks.empty()) return absl::OkStatus();
  Stopwatch sw;
  RESA_RETURN_IF_ERROR(backend_.Forward(chunks, nullptr));
  for (int id : run) {
    Seq& s = *seqs_[id];
    s.report.rectifications++;
    s.report.rectified_tokens += s.unrectified;
    s.sparse_since_rectify = false;
    s.unrectified = 0;
  }
  rectify_seconds_ += sw.Seconds();
  return absl::OkStatus();
}

}  // namespace resa
