// Per-rank checks of the sequence-parallel primitives (sp_attention.h), run by every rank of an
// SP group: threads over the fake communicator in parallel_test, processes under mpirun in
// tests/mpi. Every rank derives the same whole-sequence problem from the seed, keeps its own
// shard, and compares the distributed result with the single-rank kernels (kernels/cpu).
#pragma once

#include <cstdint>

#include "parallel/communicator.h"

namespace resa::testing {

// SelectBlocksAcrossRanks == TopBlocks over the union, bit for bit, for random scores with many
// ties (few distinct values, +inf, -0.0 beside 0.0), several block counts, heads and n.
void CheckDistributedSelection(Communicator& sp, uint32_t seed);

// Dense attention over a paged cache split page-i-mod-S across the ranks, merged across the
// group, equals PagedAttentionReference over the whole cache; the merged state is identical on
// every rank, and ranks that hold no page merge as zero (no NaN).
void CheckShardedDenseAttention(Communicator& sp, uint32_t seed);

// One full sparse decode step (local scores -> distributed top-n -> local sparse attention ->
// merge) gives the single-rank selection exactly and the single-rank output within fp32
// tolerance, with integer-valued keys so block scores tie often.
void CheckShardedSparseStep(Communicator& sp, uint32_t seed);

}  // namespace resa::testing
