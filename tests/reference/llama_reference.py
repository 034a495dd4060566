#!/usr/bin/env python3
"""Independent reference forward for Llama/Qwen2 GGUF models, written with numpy and the `gguf`
package's reader and dequantisers (no code shared with resa).

It follows llama.cpp's conventions rather than resa's: Q/K weights are used exactly as stored
(llama.cpp's converter permutes llama Q/K rows) with interleaved ("NORM") RoPE for llama and
half-split ("NEOX") RoPE for qwen2, and computes in float64. Agreement with resa therefore also
checks resa's un-permutation and its NeoX RoPE.

Usage: llama_reference.py MODEL.gguf DUMP.bin [--report OUT.json]
DUMP.bin is written by resa-reference-dump: the prompt ids, resa's logits for every prompt
position, and resa's greedy continuation. Exit 0 when they agree within the stated tolerance.
"""
import argparse
import json
import struct
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

# resa computes in fp32; the reference in float64 from the same dequantised weights. Measured on
# the default model (30 layers, logits of magnitude ~10-30): max |diff| 4.4e-5 over every prompt
# position. 1e-3 keeps a 20x margin for other BLAS builds and thread counts while any real bug
# (a wrong RoPE pairing, norm epsilon, quant block or bias) moves logits by 0.1 or far more.
LOGIT_ATOL = 1e-3


def field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    v = f.contents()
    return v


class Model:
    def __init__(self, path):
        r = GGUFReader(path)
        self.arch = field(r, "general.architecture")
        a = self.arch
        self.n_layer = int(field(r, f"{a}.block_count"))
        self.n_embd = int(field(r, f"{a}.embedding_length"))
        self.n_head = int(field(r, f"{a}.attention.head_count"))
        self.n_kv = int(field(r, f"{a}.attention.head_count_kv", self.n_head))
        self.eps = float(field(r, f"{a}.attention.layer_norm_rms_epsilon"))
        self.theta = float(field(r, f"{a}.rope.freq_base", 10000.0))
        self.hd = self.n_embd // self.n_head
        self.t = {}
        for t in r.tensors:
            w = dequantize(t.data, t.tensor_type).astype(np.float64)
            shape = tuple(int(x) for x in reversed(t.shape.tolist()))  # numpy row-major
            self.t[t.name] = w.reshape(shape)
        self.out = self.t.get("output.weight", self.t["token_embd.weight"])

    def rope(self, x, pos):
        # x: [heads, hd]
        hd = self.hd
        inv = self.theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
        ang = pos * inv
        c, s = np.cos(ang), np.sin(ang)
        y = x.copy()
        if self.arch == "llama":  # GGML_ROPE_TYPE_NORM: adjacent pairs
            a, b = x[:, 0::2], x[:, 1::2]
            y[:, 0::2] = a * c - b * s
            y[:, 1::2] = a * s + b * c
        else:  # NEOX: halves
            h = hd // 2
            a, b = x[:, :h], x[:, h:]
            y[:, :h] = a * c - b * s
            y[:, h:] = a * s + b * c
        return y

    def norm(self, x, w):
        return x / np.sqrt(np.mean(x * x) + self.eps) * w

    def step(self, token, pos, cache):
        t = self.t
        x = t["token_embd.weight"][token].copy()
        g = self.n_head // self.n_kv
        for i in range(self.n_layer):
            p = f"blk.{i}."
            h = self.norm(x, t[p + "attn_norm.weight"])
            q = t[p + "attn_q.weight"] @ h
            k = t[p + "attn_k.weight"] @ h
            v = t[p + "attn_v.weight"] @ h
            if p + "attn_q.bias" in t:
                q += t[p + "attn_q.bias"]
                k += t[p + "attn_k.bias"]
                v += t[p + "attn_v.bias"]
            q = self.rope(q.reshape(self.n_head, self.hd), pos)
            k = self.rope(k.reshape(self.n_kv, self.hd), pos)
            v = v.reshape(self.n_kv, self.hd)
            cache[i][0].append(k)
            cache[i][1].append(v)
            K = np.stack(cache[i][0])  # [T, kv, hd]
            V = np.stack(cache[i][1])
            o = np.empty((self.n_head, self.hd))
            for j in range(self.n_head):
                kh = j // g
                s = K[:, kh, :] @ q[j] / np.sqrt(self.hd)
                s = np.exp(s - s.max())
                o[j] = (s / s.sum()) @ V[:, kh, :]
            x = x + t[p + "attn_output.weight"] @ o.reshape(-1)
            h = self.norm(x, t[p + "ffn_norm.weight"])
            gt = t[p + "ffn_gate.weight"] @ h
            up = t[p + "ffn_up.weight"] @ h
            x = x + t[p + "ffn_down.weight"] @ (gt / (1 + np.exp(-gt)) * up)
        return self.out @ self.norm(x, t["output_norm.weight"])


def read_dump(path):
    with open(path, "rb") as f:
        magic, n_prompt, vocab, n_gen = struct.unpack("<4sIII", f.read(16))
        if magic != b"RSAD":
            sys.exit(f"{path}: not a resa-reference-dump file")
        ids = np.frombuffer(f.read(4 * n_prompt), dtype=np.int32)
        logits = np.frombuffer(f.read(4 * n_prompt * vocab), dtype=np.float32).reshape(n_prompt, vocab)
        gen = np.frombuffer(f.read(4 * n_gen), dtype=np.int32)
    return ids, logits, gen


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("dump")
    ap.add_argument("--report")
    args = ap.parse_args()
    ids, resa_logits, resa_gen = read_dump(args.dump)
    m = Model(args.model)
    cache = [([], []) for _ in range(m.n_layer)]
    worst = 0.0
    failures = []
    near_ties = 0
    ref = None
    for pos, tok in enumerate(ids):
        ref = m.step(int(tok), pos, cache)
        diff = float(np.max(np.abs(ref - resa_logits[pos])))
        worst = max(worst, diff)
        r_top, s_top = int(np.argmax(ref)), int(np.argmax(resa_logits[pos]))
        srt = np.sort(ref)
        margin = float(srt[-1] - srt[-2])
        if r_top != s_top:
            if margin < 2 * LOGIT_ATOL:
                near_ties += 1  # the reference itself cannot separate them at this tolerance
            else:
                failures.append(f"position {pos}: top-1 {s_top} != reference {r_top} (margin {margin:.4f})")
        if diff > LOGIT_ATOL:
            failures.append(f"position {pos}: max |logit diff| {diff:.5f} > {LOGIT_ATOL}")
    # Greedy continuation with the reference's own KV cache.
    ref_gen = []
    pos = len(ids)
    tok = int(np.argmax(ref))
    for i in range(len(resa_gen)):
        ref_gen.append(tok)
        if i + 1 == len(resa_gen):
            break
        ref = m.step(tok, pos, cache)
        pos += 1
        tok = int(np.argmax(ref))
    gen_match = [int(x) for x in resa_gen] == ref_gen
    if not gen_match:
        first = next(i for i, (a, b) in enumerate(zip(resa_gen, ref_gen)) if a != b)
        failures.append(f"greedy tokens differ from index {first}: resa {list(resa_gen[first:first+5])} "
                        f"reference {ref_gen[first:first+5]}")
    report = {"prompt_tokens": len(ids), "greedy_tokens": len(resa_gen),
              "max_abs_logit_diff": worst, "tolerance": LOGIT_ATOL,
              "top1_near_ties": near_ties, "greedy_match": gen_match, "failures": failures}
    print(json.dumps(report, indent=1))
    if args.report:
        with open(args.report, "w") as f:
            json.dump(report, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
