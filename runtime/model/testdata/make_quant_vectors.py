#!/usr/bin/env python3
"""Writes the known-answer vectors used by runtime/model/ggml_types_test.cc and
weight_source_test.cc. The expected values come from the `gguf` PyPI package (gguf-py), an
implementation independent of ours.

  quant_vectors.bin: for each supported GGML type, random raw blocks (with finite scale
    fields) and gguf.quants.dequantize() of them. Layout, little-endian:
      "RQV1", u32 record count, then per record:
      u32 type id, u32 element count, u32 byte count, raw bytes, element count x f32.
  smollm2_q_rows.json (only when the SmolLM2 GGUF is given): selected rows of a few weights of
    SmolLM2-135M-Instruct.Q4_1.gguf in Hugging Face order (llama Q/K un-permuted with numpy
    reshapes), as checksums.

Usage: make_quant_vectors.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]
"""

import json
import os
import struct
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

HERE = os.path.dirname(os.path.abspath(__file__))

# byte offsets of the fp16 scale fields inside one block, per type
HALF_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}


def random_blocks(rng, qtype, n_blocks):
    _, type_size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in HALF_FIELDS[qtype]:
        scale = (rng.standard_normal(n_blocks) * 0.02).astype(np.float16)
        raw[:, off:off + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    return raw


def records(rng):
    out = []
    # Plain floats, including specials (signed zero, subnormals, extremes, inf, nan).
    f32 = np.concatenate([rng.standard_normal(60).astype(np.float32),
                          np.array([0.0, -0.0, np.inf, -np.inf], np.float32)])
    out.append((T.F32, f32.view(np.uint8), f32))
    f16_bits = np.concatenate([rng.integers(0, 0x7C00, 48, dtype=np.uint16),  # finite positive
                               rng.integers(0x8000, 0xFC00, 8, dtype=np.uint16),  # finite neg
                               np.array([0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0x7BFF,
                                         0x7C00, 0xFC00], np.uint16)])
    out.append((T.F16, f16_bits.view(np.uint8), dequantize(f16_bits.view(np.uint8), T.F16)))
    bf16_bits = np.concatenate([rng.integers(0, 0x7F80, 56, dtype=np.uint16),
                                np.array([0x0000, 0x8000, 0x0001, 0x007F, 0x3F80, 0xBF80,
                                          0x7F80, 0xFF80], np.uint16)])
    out.append((T.BF16, bf16_bits.view(np.uint8), dequantize(bf16_bits.view(np.uint8), T.BF16)))
    for qtype, n_blocks in [(T.Q4_0, 6), (T.Q4_1, 6), (T.Q5_0, 6), (T.Q5_1, 6), (T.Q8_0, 6),
                            (T.Q2_K, 2), (T.Q3_K, 2), (T.Q4_K, 2), (T.Q5_K, 2), (T.Q6_K, 2)]:
        raw = random_blocks(rng, qtype, n_blocks)
        expected = dequantize(raw, qtype).astype(np.float32).reshape(-1)
        out.append((qtype, raw.reshape(-1), expected))
    return out


def write_quant_vectors(path):
    rng = np.random.default_rng(20240611)
    recs = records(rng)
    with open(path, "wb") as f:
        f.write(b"RQV1")
        f.write(struct.pack("<I", len(recs)))
        for qtype, raw, expected in recs:
            raw = np.ascontiguousarray(raw, dtype=np.uint8)
            expected = np.ascontiguousarray(expected, dtype=np.float32)
            f.write(struct.pack("<III", int(qtype), expected.size, raw.size))
            f.write(raw.tobytes())
            f.write(expected.astype("<f4").tobytes())
    print(f"wrote {path}: {len(recs)} records")


def unpermute(w, n_head):
    """Inverse of llama.cpp's convert_hf_to_gguf permute (HF half-split -> interleaved)."""
    rows = w.shape[0]
    hd = rows // n_head
    return (w.reshape(n_head, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2)
            .reshape(w.shape))


def row_checksums(row):
    row = row.astype(np.float64)
    idx = np.arange(row.size)
    return {
        "first": [float(x) for x in row[:8]],
        "sum": float(row.sum()),
        "abs_sum": float(np.abs(row).sum()),
        "weighted": float((row * np.cos(idx * 0.1)).sum()),
    }


def write_smollm2_reference(gguf_path, out_path):
    r = GGUFReader(gguf_path)
    n_head = int(r.fields["llama.attention.head_count"].contents())
    n_kv = int(r.fields["llama.attention.head_count_kv"].contents())
    tensors = {t.name: t for t in r.tensors}

    def hf_matrix(gguf_name, heads):
        t = tensors[gguf_name]
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape(int(np.prod(t.shape[1:])), int(t.shape[0])) if len(t.shape) > 1 else \
            w.reshape(1, -1)
        return unpermute(w, heads) if heads else w

    picks = [
        ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", n_head,
         [0, 1, 31, 32, 33, 63, 64, 100, 575]),
        ("blk.5.attn_k.weight", "model.layers.5.self_attn.k_proj.weight", n_kv,
         [0, 1, 31, 32, 63, 64, 191]),
        ("blk.29.attn_q.weight", "model.layers.29.self_attn.q_proj.weight", n_head, [7, 40]),
        ("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight", 0, [0, 33]),
        ("token_embd.weight", "model.embed_tokens.weight", 0, [0, 1, 49151]),
        ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight", 0, [0, 575]),
        ("output_norm.weight", "model.norm.weight", 0, [0]),
    ]
    out = {"source": os.path.basename(gguf_path), "weights": []}
    for gguf_name, canonical, heads, rows in picks:
        w = hf_matrix(gguf_name, heads)
        out["weights"].append({
            "name": canonical,
            "type": tensors[gguf_name].tensor_type.name,
            "rows": {str(i): row_checksums(w[i]) for i in rows},
        })
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    write_quant_vectors(os.path.join(HERE, "quant_vectors.bin"))
    if len(sys.argv) > 1:
        write_smollm2_reference(sys.argv[1], os.path.join(HERE, "smollm2_q_rows.json"))
