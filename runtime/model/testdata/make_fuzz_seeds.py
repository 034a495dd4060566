#!/usr/bin/env python3
"""Writes the seed corpora of tests/fuzz/gguf_fuzz and safetensors_fuzz: tiny valid files
(a few KB) written by independent writers (gguf-py's GGUFWriter, a hand-rolled safetensors
writer), so the fuzzers start from inputs that reach deep into the parsers and loaders.

Usage: make_fuzz_seeds.py   (paths are relative to this script)
"""

import json
import os
import struct

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from make_quant_vectors import HALF_FIELDS

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
GGUF_DIR = os.path.join(REPO, "tests", "fuzz", "corpus", "gguf")
ST_DIR = os.path.join(REPO, "tests", "fuzz", "corpus", "safetensors")


def raw_blocks(rng, qtype, rows, cols):
    """Random blocks with finite fp16 scales."""
    block, size = GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in HALF_FIELDS[qtype]:
        scale = (rng.standard_normal(n_blocks) * 0.02).astype(np.float16)
        raw[:, off:off + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(rows, cols // block * size)


def tiny_model(path, arch, *, bias, tied, alignment=None):
    rng = np.random.default_rng(7)
    hidden, heads, kv_heads, inter, vocab = 32, 4, 2, 32, 8
    hd = hidden // heads
    w = GGUFWriter(path, arch)
    if alignment:
        w.data_alignment = alignment
        w.add_custom_alignment(alignment)
    w.add_name("fuzz-seed")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_token_list([f"t{i}".encode() for i in range(vocab)])

    def f32(name, *shape):
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))

    def quant(name, qtype, rows, cols):
        w.add_tensor(name, raw_blocks(rng, qtype, rows, cols), raw_dtype=qtype)

    quant("token_embd.weight", T.Q8_0, vocab, hidden)
    f32("output_norm.weight", hidden)
    if not tied:
        w.add_tensor("output.weight", rng.standard_normal((vocab, hidden)).astype(np.float16))
    p = "blk.0."
    f32(p + "attn_norm.weight", hidden)
    f32(p + "ffn_norm.weight", hidden)
    quant(p + "attn_q.weight", T.Q4_0, heads * hd, hidden)
    quant(p + "attn_k.weight", T.Q4_1, kv_heads * hd, hidden)
    quant(p + "attn_v.weight", T.Q5_0, kv_heads * hd, hidden)
    quant(p + "attn_output.weight", T.Q5_1, hidden, heads * hd)
    if bias:
        f32(p + "attn_q.bias", heads * hd)
        f32(p + "attn_k.bias", kv_heads * hd)
        f32(p + "attn_v.bias", kv_heads * hd)
    w.add_tensor(p + "ffn_gate.weight",
                 (rng.standard_normal((inter, hidden)).astype(np.float32).view(np.uint32) >> 16)
                 .astype(np.uint16).view(np.uint8), raw_dtype=T.BF16)
    quant(p + "ffn_up.weight", T.Q8_0, inter, hidden)
    quant(p + "ffn_down.weight", T.Q4_0, hidden, inter)
    # One small tensor of each K-quant so the fuzzer reaches those dequantisers.
    for qtype in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K):
        quant(f"extra.{qtype.name.lower()}", qtype, 1, 256)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def metadata_only(path):
    w = GGUFWriter(path, "llama")
    w.add_uint8("u8", 200)
    w.add_int8("i8", -5)
    w.add_uint16("u16", 60000)
    w.add_int16("i16", -300)
    w.add_uint32("u32", 4000000000)
    w.add_int32("i32", -7)
    w.add_float32("f32", 0.25)
    w.add_bool("bool", True)
    w.add_string("str", "héllo")
    w.add_uint64("u64", 1 << 40)
    w.add_int64("i64", -(1 << 40))
    w.add_float64("f64", 1e-300)
    w.add_array("ints", [1, 2, 3])
    w.add_array("strs", ["a", "bb"])
    w.add_array("nested", [[1, 2], [3]])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def safetensors_file(path, tensors, metadata=None):
    header, data, offset = {}, b"", 0
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def main():
    os.makedirs(GGUF_DIR, exist_ok=True)
    os.makedirs(ST_DIR, exist_ok=True)
    tiny_model(os.path.join(GGUF_DIR, "tiny_llama.gguf"), "llama", bias=False, tied=True)
    tiny_model(os.path.join(GGUF_DIR, "tiny_qwen2_align64.gguf"), "qwen2", bias=True, tied=False,
               alignment=64)
    metadata_only(os.path.join(GGUF_DIR, "metadata_only.gguf"))

    rng = np.random.default_rng(11)
    f32 = rng.standard_normal((4, 8)).astype(np.float32)
    f16 = rng.standard_normal((8,)).astype(np.float16)
    bf16 = (rng.standard_normal((2, 4)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    safetensors_file(os.path.join(ST_DIR, "float_dtypes.safetensors"), [
        ("model.embed_tokens.weight", "F32", f32.shape, f32.tobytes()),
        ("model.norm.weight", "F16", f16.shape, f16.tobytes()),
        ("lm_head.weight", "BF16", bf16.shape, bf16.tobytes()),
    ], {"format": "pt"})
    safetensors_file(os.path.join(ST_DIR, "mixed.safetensors"), [
        ("scalar", "I64", (), struct.pack("<q", 42)),
        ("empty", "F32", (0, 3), b""),
        ("f64", "F64", (2,), struct.pack("<2d", 1.5, -2.0)),
        ("u8", "U8", (3,), b"\x01\x02\x03"),
    ])
    safetensors_file(os.path.join(ST_DIR, "empty.safetensors"), [])
    for d in (GGUF_DIR, ST_DIR):
        for name in sorted(os.listdir(d)):
            print(f"{os.path.join(d, name)}: {os.path.getsize(os.path.join(d, name))} bytes")


if __name__ == "__main__":
    main()
