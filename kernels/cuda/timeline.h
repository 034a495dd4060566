// Diagnostic: where a batch-1 attention step's time goes between and inside its kernels.
//
// Built with RESA_KERNEL_TIMELINE (CMake option of the same name), thread 0 of every CTA of the
// fused selection's latency kernel, the decode kernel and its merge kernel reads the global
// nanosecond timer (%globaltimer) at the phase boundaries below and keeps, per phase, the
// earliest and the latest CTA's reading (atomicMin / atomicMax). `resa-bench kernels` resets the
// readings, runs one launch chain, reads them back and prints them relative to a reference
// (docs/kernels.md, "Benchmark"). Without the option the stamps compile to nothing and
// ReadKernelTimeline returns no phases.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace resa::cuda {

enum TimelinePhase : int {
  kTlSelectEntry,    // SelectKernel: first instruction
  kTlSelectWaited,   // after its PDL wait
  kTlSelectEnd,      // the CTA's end (its tail's end for a row's last CTA)
  kTlDecodeEntry,    // DecodeKernel: first instruction
  kTlDecodeWaited,   // after its PDL wait
  kTlDecodeStaged,   // the split's first round of page ids in shared memory (a CTA barrier)
  kTlDecodeLooped,   // every warp through its pages, states in shared memory (a CTA barrier)
  kTlDecodeWritten,  // thread 0's share of the CTA's result written
  kTlDecodeExit,     // the CTA's end (after the in-launch fold, if any)
  kTlMergeEntry,     // DecodeMergeKernel: first instruction
  kTlMergeWaited,    // after its PDL wait
  kTlMergeExit,      // its output written (CTAs with partials to fold)
  kTlSelectScored,   // a selection CTA (either kernel): its scoring done, before its arrival
  kTlSelectTail,     // the row's last CTA: its tail done (rows that rank, 1 < n < M)
  kTlPhases
};

struct KernelTimeline {
  std::vector<const char*> names;  // one a phase; empty without RESA_KERNEL_TIMELINE
  std::vector<uint64_t> first;     // earliest CTA's reading, ns (UINT64_MAX: no CTA reached it)
  std::vector<uint64_t> last;      // latest CTA's reading, ns (0: no CTA reached it)
};

// Both act on the current device and are no-ops (empty result) without the option.
absl::Status ResetKernelTimeline();
absl::StatusOr<KernelTimeline> ReadKernelTimeline();

namespace detail {
// The selection's translation unit keeps its own readings (selection.cu).
absl::Status ResetSelectTimeline();
absl::Status ReadSelectTimeline(uint64_t (*stamps)[2]);
}  // namespace detail

}  // namespace resa::cuda
