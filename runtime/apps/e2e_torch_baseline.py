#!/usr/bin/env python3
"""PyTorch peer for `resa-bench e2e`: one dense decode step of a Llama/Qwen2-shaped model with
random bf16 weights, as a user would write it (cuBLAS GEMVs through torch.matmul, RMSNorm,
NeoX RoPE, QKV bias, SwiGLU, residuals, lm_head; attention through
scaled_dot_product_attention(enable_gqa=True) over a contiguous [batch, kv_heads, ctx, d] cache),
captured in a CUDA graph and replayed. Prints one JSON line per (context, batch):
{"bench":"e2e_torch","context":...,"batch":...,"ms":...} (median of replays, CUDA events)."""
import argparse
import json
import sys

import torch
import torch.nn.functional as F


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="")
    for name in ["vocab", "hidden", "inter", "layers", "heads", "kv-heads", "head-dim"]:
        p.add_argument("--" + name, type=int, required=True)
    p.add_argument("--contexts", default="32768,131072,262144")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--iters", type=int, default=20)
    a = p.parse_args()
    dev, bf = "cuda", torch.bfloat16
    hid, inter, H, Hkv, d = a.hidden, a.inter, a.heads, a.kv_heads, a.head_dim
    qkv_dim = (H + 2 * Hkv) * d

    def rand(*shape, scale):
        return torch.empty(*shape, device=dev, dtype=bf).uniform_(-scale, scale)

    W = []
    for _ in range(a.layers):
        W.append(dict(
            n1=torch.ones(hid, device=dev, dtype=bf), n2=torch.ones(hid, device=dev, dtype=bf),
            qkv=rand(qkv_dim, hid, scale=(3 / hid) ** 0.5), b=rand(qkv_dim, scale=0.1),
            o=rand(hid, H * d, scale=(3 / (H * d)) ** 0.5),
            gu=rand(2 * inter, hid, scale=(3 / hid) ** 0.5),
            down=rand(hid, inter, scale=(3 / inter) ** 0.5)))
    embed = rand(a.vocab, hid, scale=1.0)
    lm_head = rand(a.vocab, hid, scale=(3 / hid) ** 0.5)
    nf = torch.ones(hid, device=dev, dtype=bf)

    def rms(x, w):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(bf) * w

    def rope(x, cos, sin):  # x [B, heads, 1, d]
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    for ctx in [int(c) for c in a.contexts.split(",")]:
        for B in [int(b) for b in a.batches.split(",")]:
            try:
                K = [rand(B, Hkv, ctx + 1, d, scale=1.0) for _ in range(a.layers)]
                V = [rand(B, Hkv, ctx + 1, d, scale=1.0) for _ in range(a.layers)]
                tokens = torch.randint(0, a.vocab, (B,), device=dev)
                inv = 10000.0 ** (-torch.arange(0, d // 2, device=dev, dtype=torch.float64) * 2 / d)
                ang = (ctx * inv).float()
                cos, sin = ang.cos().to(bf).view(1, 1, 1, -1), ang.sin().to(bf).view(1, 1, 1, -1)

                def step():
                    h = embed[tokens]
                    for l, w in enumerate(W):
                        x = rms(h, w["n1"])
                        qkv = torch.addmm(w["b"], x, w["qkv"].t())
                        q = qkv[:, : H * d].view(B, H, 1, d)
                        k = qkv[:, H * d: (H + Hkv) * d].view(B, Hkv, 1, d)
                        v = qkv[:, (H + Hkv) * d:].view(B, Hkv, 1, d)
                        q, k = rope(q, cos, sin), rope(k, cos, sin)
                        K[l][:, :, ctx: ctx + 1] = k
                        V[l][:, :, ctx: ctx + 1] = v
                        o = F.scaled_dot_product_attention(q, K[l], V[l], enable_gqa=True)
                        h = h + o.reshape(B, H * d) @ w["o"].t()
                        gu = rms(h, w["n2"]) @ w["gu"].t()
                        h = h + (F.silu(gu[:, :inter]) * gu[:, inter:]) @ w["down"].t()
                    return rms(h, nf) @ lm_head.t()

                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    for _ in range(3):
                        step()
                torch.cuda.current_stream().wait_stream(s)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    step()
                for _ in range(3):
                    g.replay()
                times = []
                for _ in range(a.iters):
                    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    e0.record()
                    g.replay()
                    e1.record()
                    e1.synchronize()
                    times.append(e0.elapsed_time(e1))
                times.sort()
                print(json.dumps({"bench": "e2e_torch", "model": a.model, "context": ctx,
                                  "batch": B, "ms": times[len(times) // 2]}), flush=True)
                del g
            except torch.OutOfMemoryError as e:
                print(json.dumps({"bench": "e2e_torch", "model": a.model, "context": ctx,
                                  "batch": B, "error": "out of memory: " + str(e)[:200]}),
                      flush=True)
            K = V = None
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
