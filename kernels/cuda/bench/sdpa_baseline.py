#!/usr/bin/env python3
"""PyTorch baselines for `resa-bench kernels`, measured on the same GPU in the same run.

Times are medians of CUDA-graph replays (host launch overhead excluded, as for resa-bench's own
kernels); the eager figure is printed beside it. For each shape (model heads, context, batch) it
times one decode step of dense attention with
torch.nn.functional.scaled_dot_product_attention(enable_gqa=True) on contiguous bf16 K/V
[batch, kv_heads, context, head_dim] (what a PyTorch user would run), and torch.topk over one
layer's block scores (the unfused selection). K/V are rotated over several layers so the working
set exceeds the L2 cache. Prints one JSON line per measurement on stdout.

usage: sdpa_baseline.py --shape NAME:HQ:HKV:D:CONTEXT:BATCH [--shape ...] [--iters N]
"""
import argparse
import json
import math
import statistics
import sys


def time_us(fn, iters, repeats=5, graph=True):
    """Median microseconds per fn(i): `iters` calls captured in one CUDA graph whose replays are
    timed (as resa-bench times its kernels), or eager back-to-back calls with graph=False."""
    import torch
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(3):
            fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for i in range(iters):
                fn(i)
        run = g.replay
    else:
        def run():
            for i in range(iters):
                fn(i)
    run()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        stop.record()
        stop.synchronize()
        samples.append(start.elapsed_time(stop) * 1e3 / iters)
    return statistics.median(samples)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", action="append", default=[])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--min-bytes", type=float, default=1.5e9, help="rotated working set")
    args = ap.parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except Exception as e:  # noqa: BLE001 - report any import failure as a skip
        print(json.dumps({"bench": "sdpa", "error": f"import torch failed: {e}"}))
        return 0
    if not torch.cuda.is_available():
        print(json.dumps({"bench": "sdpa", "error": "torch sees no CUDA device"}))
        return 0
    dev = torch.device("cuda")
    for spec in args.shape:
        name, hq, hkv, d, ctx, batch = spec.split(":")
        hq, hkv, d, ctx, batch = int(hq), int(hkv), int(d), int(ctx), int(batch)
        kv_bytes = 2 * batch * hkv * ctx * d * 2
        layers = max(2, math.ceil(args.min_bytes / kv_bytes))
        ks = [torch.randn(batch, hkv, ctx, d, device=dev, dtype=torch.bfloat16) for _ in range(layers)]
        vs = [torch.randn(batch, hkv, ctx, d, device=dev, dtype=torch.bfloat16) for _ in range(layers)]
        q = torch.randn(batch, hq, 1, d, device=dev, dtype=torch.bfloat16)

        def sdpa(i):
            F.scaled_dot_product_attention(q, ks[i % layers], vs[i % layers], enable_gqa=True)

        us = time_us(sdpa, args.iters)
        eager_us = time_us(sdpa, args.iters, graph=False)
        print(json.dumps({"bench": "sdpa", "model": name, "context": ctx, "batch": batch,
                          "q_heads": hq, "kv_heads": hkv, "head_dim": d, "us": round(us, 3),
                          "eager_us": round(eager_us, 3),
                          "bytes": kv_bytes, "TBps": round(kv_bytes / us / 1e6, 3),
                          "torch": torch.__version__}), flush=True)
        del ks, vs
        blocks = (ctx + 15) // 16
        n = max(math.ceil(0.1 * blocks), min(blocks, 16))
        scores = [torch.randn(batch, hkv, blocks, device=dev, dtype=torch.float32)
                  for _ in range(8)]

        def topk(i):
            torch.topk(scores[i % 8], n, dim=-1, sorted=True)

        us = time_us(topk, args.iters)
        print(json.dumps({"bench": "torch_topk", "model": name, "context": ctx, "batch": batch,
                          "blocks": blocks, "n": n, "us": round(us, 3)}), flush=True)
        del scores
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
