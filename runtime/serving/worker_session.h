// Executes the coordinator's plans on one rank of a worker group (DESIGN.md §6). Every rank of
// the group runs the same plans in the same order on its shard of the model; rank 0 samples each
// token and broadcasts it (through `agree`), so all ranks feed identical tokens, and only rank 0's
// events are sent to the coordinator.
//
// A plan: cancel sequences (pages freed), admit sequences (dense prefill; the first token is
// sampled from the prefill's logits), then decode steps feeding every running sequence, each
// followed by the rectifications the plan lists for it. A sequence finishes by itself on an
// end-of-sequence token (unless ignore_eos), at max_tokens, or when its context is full.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "parallel/communicator.h"
#include "resa.pb.h"
#include "runtime/engine/decoder.h"
#include "runtime/engine/model_backend.h"
#include "runtime/engine/sampler.h"

namespace resa::serving {

class WorkerSession {
 public:
  // `backend`: this rank's model and KV pool (CPU or CUDA). `agree`: the communicator over every
  // rank of the group (null for a group of one).
  WorkerSession(ModelBackend& backend, std::vector<int32_t> stop_ids, int32_t max_context,
                Communicator* agree);

  // Runs `plan`, calling `emit` (rank 0's events: step tokens, sequence done, plan done) as they
  // happen. Errors of one sequence (such as an invalid setting) finish that sequence with
  // FINISH_REASON_ERROR; a returned error means the group cannot continue (a forward or a
  // collective failed), and the caller reports it as fatal.
  absl::Status Execute(const v1::Plan& plan, const std::function<void(v1::WorkerEvent)>& emit);

  int32_t running() const { return int32_t(seqs_.size()); }
  int64_t pages_used() const;

 private:
  struct Seq {
    int id = -1;  // the decoder's
    std::unique_ptr<Sampler> sampler;
    int32_t max_tokens = 0;
    int32_t generated = 0;
    bool ignore_eos = false;
    int32_t last = 0;
  };
  // Samples (rank 0) and broadcasts one token per sequence of `order`: after a decode step from
  // that step's logits rows (order = feed order) through the backend; after admissions from
  // each prefill's host logits.
  absl::Status SampleAndShare(const std::vector<uint64_t>& order, bool after_step,
                              std::vector<int32_t>& tokens);
  // After a token: the reason the sequence stops here, or UNSPECIFIED.
  v1::FinishReason StopReason(const Seq& s, int32_t token) const;
  void Finish(uint64_t seq, v1::FinishReason reason, const std::string& error,
              const std::function<void(v1::WorkerEvent)>& emit);

  ModelBackend& backend_;
  Decoder decoder_;
  std::vector<int32_t> stop_ids_;
  int32_t max_context_;
  Communicator* agree_;
  std::map<uint64_t, Seq> seqs_;
};

}  // namespace resa::serving
