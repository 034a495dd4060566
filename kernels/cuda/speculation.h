// The buffer of the speculative sparse attention (SelectBlocksParams::spec, written by the
// selection kernel; DecodeAttentionParams::spec_buffer, read by the sparse decode's merge
// kernel), for rows = batch x num_kv_heads rows of a launch, `slots` partial states a row (one a
// selection CTA), blocks_stride as the selection's output and head dim D:
//   counts [rows] int32: the row's partial slots, when the selection attended to all of its
//          blocks (0: the sparse decode reads the row as without speculation);
//   gens   [rows] uint32: tails published for the row so far; the one part that lives across
//          launches (any start value: a launch waits for it to change);
//   pub    [rows] int32: the last tail's publication: 1 if the attended blocks were all selected,
//          plus twice the tail's CTA;
//   marks  [rows][blocks_stride] uint8: 1 where output block i of the row was attended to
//          before the tail's end;
//   lse    [rows][slots][kSpecHeads] fp32, natural log; o [rows][slots][kSpecHeads][D] fp32,
//          normalised: the partial states, in DecodeKernel's split-partial layout.
#pragma once

#include <cstddef>
#include <cstdint>

namespace resa::cuda {

constexpr int kSpecHeads = 8;  // query heads of a group a partial state holds (group <= 8)

struct SpeculationLayout {
  size_t counts = 0, gens = 0, pub = 0, marks = 0, lse = 0, o = 0, bytes = 0;
};

inline SpeculationLayout SpeculationLayoutOf(int64_t rows, int slots, int blocks_stride,
                                             int head_dim) {
  auto up = [](size_t x) { return (x + 255) & ~size_t(255); };
  SpeculationLayout l;
  const size_t r = rows > 0 ? size_t(rows) : 0, s = slots > 0 ? size_t(slots) : 0;
  l.counts = 0;
  l.gens = up(r * sizeof(int32_t));
  l.pub = l.gens + up(r * sizeof(uint32_t));
  l.marks = l.pub + up(r * sizeof(int32_t));
  l.lse = l.marks + up(r * size_t(blocks_stride > 0 ? blocks_stride : 0));
  l.o = l.lse + up(r * s * kSpecHeads * sizeof(float));
  l.bytes = l.o + up(r * s * kSpecHeads * size_t(head_dim) * sizeof(float));
  return l;
}

}  // namespace resa::cuda
