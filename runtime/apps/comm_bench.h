// `resa-bench comm`: the communication of one distributed decode step (DESIGN.md §5), per phase.
//
//   mpirun -np N resa-bench comm --model M --tp T --sp S --contexts C1,C2
//
// Every rank runs the TP x SP CPU forward (resa-worker's) on a context of C tokens whose K/V are
// filled directly (deterministic values, no prefill), then times sparse decode steps and one
// rectification pass. The group communicators are wrapped in CountingCommunicator, so the model
// code is the production one; operations are attributed to phases by group and type: SP int32
// all-gathers = the selection exchange, SP float all-gathers = the LSE merge, TP all-reduces =
// o_proj/down_proj, TP all-gathers = logits (and pooled queries when KV heads replicate).
// Time inside a collective includes waiting for late peers; each of the first three phases is
// also replayed back to back after a barrier at its message size, and calls x that latency is
// the step's communication floor (what the exchanges cost when ranks arrive together).
// Rank 0 prints one JSON line per context (times: mean over ranks; bytes: the largest rank's)
// and a table on stderr. scripts/comm_bench.sh runs np = 1, 2, 4 and prints ratios to np = 1.
#pragma once

#include "CLI/CLI.hpp"

namespace resa {

void AddCommBenchCommand(CLI::App& app, int& exit_code);

}  // namespace resa
