// The selection tail (select_tail.cuh) on keys the caller chooses: one CTA of 512 threads runs
// one form of the tail over them, as the fused selection's last CTA of a row does, and the ids
// come back to the host. The fused selection's own tests reach the tail only through scores of
// real queries and summaries, which decide its path (how many radix passes, how large the pivot
// bins, whether the candidates are ranked directly); here keys are built to take each path on
// purpose. SelectTailReference is the plain C++ twin. Device memory is internal.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace resa::cuda {

enum class SelectTailForm {
  kRegister,       // RegisterTail: keys in registers, mo <= 16384
  kStrided,        // StridedTail, keys read from L2 in every sweep
  kStridedShared,  // StridedTail, keys staged in shared memory (mo <= 16384)
  kCandidate,      // CandidateTail from the keys >= candidate_key; RegisterTail when it declines
  kHistogram,      // HistTail from the keys >= candidate_key and their histogram (bins of
                   // 2^hist_shift keys); CandidateTail, then RegisterTail, when it declines
};
const char* SelectTailFormName(SelectTailForm form);

struct SelectTailProbe {
  std::vector<uint32_t> keys;  // mo >= 2 keys (order-preserving images of the scores)
  uint32_t need = 0;           // 1 <= need < mo
  SelectTailForm form = SelectTailForm::kRegister;
  // kRegister / kCandidate: the rank whose first-pass bin edge comes back as hint_key (0: none).
  uint32_t hint_rank = 0;
  uint32_t candidate_key = 0;  // kCandidate / kHistogram: blocks with key >= this are candidates
  uint32_t hist_shift = 0;     // kHistogram: 0-31
};

struct SelectTailResult {
  std::vector<int32_t> ids;      // the need selected blocks, ascending
  uint32_t hint_key = 0;         // with hint_rank > 0: at least hint_rank keys are >= it
  bool from_candidates = false;  // kCandidate / kHistogram: a candidate tail selected
  bool from_histogram = false;   // kHistogram: HistTail selected
  uint32_t threshold_key = 0;    // kHistogram: the tail's *t_out (what the next shift comes from)
};

// What HistTail does with a probe's keys (kHistogram): 0 when it has too few or too many
// candidates, 1 when it declines, 2 when it selects. The host's count of its histogram and pivot.
int HistTailOutcomeReference(const SelectTailProbe& p);

absl::StatusOr<SelectTailResult> RunSelectTailCuda(const SelectTailProbe& p);

// The need largest keys, ties to the lowest-numbered blocks, in ascending block order.
std::vector<int32_t> SelectTailReference(const std::vector<uint32_t>& keys, uint32_t need);

}  // namespace resa::cuda
