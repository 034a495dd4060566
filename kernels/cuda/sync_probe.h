// What one grid-wide dependency costs on the GPU: the same chain of phases run as a chain of
// kernels (one kernel a phase, with or without programmatic dependent launch, replayed from a
// CUDA graph) and as one persistent kernel with a grid barrier (of three kinds) between phases. A
// batch-1 decode layer is such a chain (qkv -> attention -> o_proj -> gate_up -> down, each needing
// all of the one before), so the difference is what a persistent layer kernel could save a boundary
// (`resa-bench kernels --sync`; docs/kernels.md, "Benchmark").
//
// Phase p (0-based) of block b: out[b] = in[(b + 1) % blocks] + 1, where in is what phase p - 1
// wrote (phase 0 reads init[b] = b), so every block depends on another block's previous phase;
// SyncProbeReference is the plain C++ twin. Device pointers are internal; results come back to
// the host.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace resa::cuda {

struct SyncProbeParams {
  int blocks = 0;     // >= 1; the barrier run needs them all resident at once
  int threads = 256;  // per block, 32-1024, a multiple of 32
  int phases = 0;     // >= 1
  int repeats = 1;    // timed replays (after one untimed warm-up); 0: run once, no timing
};

// How the persistent kernel's blocks wait for each other between phases (thread 0 of a block
// does the global part; the block waits for it at a CTA barrier):
//  * kGeneration: an atomic arrival; the last to arrive resets the count and bumps a generation
//    word that the others spin on (acquire loads);
//  * kCounter: a fire-and-forget release add to a counter that only grows, and an acquire spin
//    until it reaches (phase + 1) x blocks (no last-arriver step);
//  * kCluster: 8-CTA thread-block clusters meet at the hardware cluster barrier, and one CTA a
//    cluster takes part in a kCounter barrier over the clusters (blocks a multiple of 8).
enum class GridBarrierKind { kGeneration, kCounter, kCluster };
inline constexpr int kGridBarrierKinds = 3;
const char* GridBarrierName(GridBarrierKind kind);

struct SyncProbeResult {
  // Values of every block after the last phase.
  std::vector<int32_t> chain;        // kernels launched with PDL
  std::vector<int32_t> chain_plain;  // kernels launched without PDL
  // Microseconds a phase (total device time of a replay / phases, best of the repeats); 0 when
  // repeats == 0.
  double chain_us = 0.0, chain_plain_us = 0.0;
  // One persistent kernel (cooperative launch: every block resident), one entry a
  // GridBarrierKind. skipped: the launch could not keep every block resident (or kCluster's
  // blocks are not a multiple of 8); its values are then empty and its time 0.
  struct Barrier {
    std::vector<int32_t> values;
    double us = 0.0;
    bool skipped = false;
  };
  Barrier barriers[kGridBarrierKinds];
};

// The values after `phases` phases, as every mechanism must produce them.
std::vector<int32_t> SyncProbeReference(int blocks, int phases);

absl::StatusOr<SyncProbeResult> RunSyncProbe(const SyncProbeParams& p);

}  // namespace resa::cuda
