#!/usr/bin/env python3
"""Load generator for the gRPC control plane (a benchmark, not a test).

Runs closed-loop streaming clients against a resa server on loopback at several concurrency
levels (default 1, 8, 32) and reports requests/s, generated tokens/s, time to first token (TTFT)
and inter-token latency (ITL) percentiles. In the same run it measures two baselines:

  in-process  `resa generate` on the same model, prompt, token count, threads and decode mode,
              without gRPC (its stats line: prefill tok/s, decode tok/s of ONE sequence). The
              overhead at concurrency 1 is ITL mean / in-process per-token time - 1 (and TTFT
              against the in-process prefill time). At higher concurrency the server decodes a
              batch per step, so one-sequence time is no longer the comparator: see below.
  worker      the worker's own decode-step time (resa_step_duration_seconds from the server's
              Prometheus endpoint; needs --metrics, automatic when this script starts the server).
              Every step gives each running stream one token, so ITL mean / step mean - 1 is the
              time clients wait beyond the worker's compute: gRPC, coordinator, scheduling
              (including prefills of other requests interleaved with decode steps).

By default the script starts `resa serve` itself (BUILD/bin/resa) on a free port with a metrics
endpoint and stops it at the end; --server HOST:PORT targets a running server instead.

usage: scripts/serve_bench.py [--build build] [--server HOST:PORT] [--metrics HOST:PORT]
                              [--concurrency 1,8,32] [--tokens 32] [--json [FILE]]
Needs grpcio + protobuf (./scripts/install_deps.sh --python; run with .venv/bin/python).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "serving"))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import serving_harness as h  # noqa: E402

PROMPTS = ["Write a short story about a lighthouse keeper.",
           "Explain how rain forms, step by step.",
           "List some facts about the moon.",
           "Describe a walk through an old city.",
           "Write a letter to a friend about a summer holiday.",
           "What makes a good cup of tea?",
           "Tell me about the history of bridges.",
           "Describe the sea during a storm."]


def percentile(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def scrape(metrics_addr):
    """(sum, count) of resa_step_duration_seconds and resa_step_batch_size from /metrics."""
    text = urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=10).read().decode()
    out = {}
    for name in ("resa_step_duration_seconds_sum", "resa_step_duration_seconds_count",
                 "resa_step_batch_size_sum", "resa_step_batch_size_count",
                 "resa_plan_worker_seconds_total", "resa_plan_overhead_seconds_total"):
        m = re.search(rf"^{name} ([0-9.eE+-]+)$", text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    return out


def in_process_baseline(resa_bin, model, prompt, tokens, threads, mode, ctx, runs=3):
    """`resa generate --chat` stats of one sequence (greedy), the median of `runs` runs by decode
    speed: prefill and decode tokens/s. The chat form keeps the model talking (a raw prompt often
    ends at once with EOS, and `resa generate` has no --ignore-eos); the server requests use the
    same chat message."""
    cmd = [resa_bin, "generate", "--model", model, "--chat", "-p", prompt, "-n", str(tokens),
           "--threads", str(threads), "--mode", mode, "--ctx", str(ctx)]
    samples = []
    for _ in range(runs):
        p = subprocess.run(cmd, capture_output=True, text=True, env=dict(
            os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "passive")))
        m = re.search(r"\[stats\] prompt (\d+) tokens \| prefill ([0-9.]+) tok/s \| decode "
                      r"([0-9.]+) tok/s \((\d+) tokens\)", p.stderr)
        if p.returncode != 0 or not m:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
        prompt_tokens, prefill, decode, generated = (int(m.group(1)), float(m.group(2)),
                                                     float(m.group(3)), int(m.group(4)))
        if generated < 4 or decode <= 0:
            raise RuntimeError(f"the in-process baseline generated only {generated} tokens")
        samples.append({"prompt_tokens": prompt_tokens, "prefill_tokens_per_s": prefill,
                        "decode_tokens_per_s": decode, "generated_tokens": generated,
                        "prefill_s": prompt_tokens / prefill, "per_token_s": 1.0 / decode,
                        "command": " ".join(cmd[:3] + ["..."])})
    samples.sort(key=lambda x: x["per_token_s"])
    return samples[len(samples) // 2]


def run_level(stub, pb, concurrency, requests_per_stream, tokens, mode):
    """Closed loop: `concurrency` threads, each runs its requests back to back."""
    ttfts, itls, totals, errors = [], [], [], []
    generated = [0]
    lock = threading.Lock()
    modes = {"dense": pb.DECODE_MODE_DENSE, "sparse": pb.DECODE_MODE_SPARSE,
             "resa": pb.DECODE_MODE_RESA}

    def worker(w):
        for r in range(requests_per_stream):
            msg = pb.ChatMessage(role=b"user", content=PROMPTS[(w + r) % len(PROMPTS)].encode())
            req = pb.GenerateRequest(messages=[msg], max_tokens=tokens, ignore_eos=True,
                                     resa=pb.ResaSettings(mode=modes[mode]))
            t0 = time.perf_counter()
            prev, n, my_itl = None, 0, []
            try:
                for resp in stub.Generate(req, timeout=600):
                    k = len(resp.token_ids)
                    if k == 0:
                        continue
                    now = time.perf_counter()
                    if prev is None:
                        ttft = now - t0
                    else:
                        my_itl += [(now - prev) / k] * k
                    prev, n = now, n + k
            except Exception as e:  # noqa: BLE001 - a benchmark reports errors, it does not stop
                with lock:
                    errors.append(str(e)[:200])
                continue
            with lock:
                ttfts.append(ttft)
                itls.extend(my_itl)
                totals.append(time.perf_counter() - t0)
                generated[0] += n

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": len(totals), "errors": len(errors),
            "first_error": errors[0] if errors else None, "wall_s": wall,
            "requests_per_s": len(totals) / wall, "tokens_per_s": generated[0] / wall,
            "ttft_s": {q: percentile(ttfts, p) for q, p in (("p50", .5), ("p90", .9),
                                                           ("p99", .99))},
            "itl_s": {q: percentile(itls, p) for q, p in (("p50", .5), ("p90", .9),
                                                         ("p99", .99))},
            "itl_mean_s": statistics.fmean(itls) if itls else float("nan")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"), help="build folder (bin/)")
    ap.add_argument("--model", default=h.MODEL)
    ap.add_argument("--server", help="HOST:PORT of a running server (default: start resa serve)")
    ap.add_argument("--metrics", help="HOST:PORT of its Prometheus endpoint")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--tokens", type=int, default=32, help="generated tokens per request")
    ap.add_argument("--requests", type=int, default=0,
                    help="requests per stream (0: enough for ~16 requests per level, >= 2)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    ap.add_argument("--mode", default="resa", choices=["dense", "sparse", "resa"])
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--json", nargs="?", const="-", help="write the results as JSON (FILE or -)")
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    threads = args.threads or os.cpu_count()
    pb, pb_grpc, hpb, hpb_grpc = h.load_stubs()
    import grpc  # noqa: PLC0415

    cluster = None
    server, metrics = args.server, args.metrics
    if server is None:
        cluster = h.Cluster(os.path.join(args.build, "bin"), os.path.join(args.build,
                                                                          "serve_bench"))
        server, metrics = f"127.0.0.1:{h.free_port()}", f"127.0.0.1:{h.free_port()}"
        cluster.start("serve", ["resa", "serve", "--model", args.model, "--listen", server,
                                "--metrics-listen", metrics, "--threads", str(threads),
                                "--ctx", str(args.ctx), "--max-batch", str(max(levels)),
                                "--max-queue", "1024"])
    channel = grpc.insecure_channel(server)
    stub = pb_grpc.ResaStub(channel)
    health = hpb_grpc.HealthStub(channel)

    def serving():
        if cluster is not None and cluster.procs["serve"].poll() is not None:
            raise RuntimeError("resa serve exited:\n" + cluster.tail("serve"))
        try:
            return health.Check(hpb.HealthCheckRequest(), timeout=2).status == \
                hpb.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False
    h.wait_for(serving, 300, f"{server} to report SERVING")

    print(f"[serve_bench] server {server}, {threads} threads, {args.tokens} tokens/request, "
          f"mode {args.mode}", file=sys.stderr)
    run_level(stub, pb, 1, 1, 4, args.mode)  # warm-up
    base = in_process_baseline(os.path.join(args.build, "bin", "resa"), args.model, PROMPTS[0],
                               args.tokens, threads, args.mode, args.ctx)
    results = []
    for c in levels:
        per_stream = args.requests or max(2, -(-16 // c))
        before = scrape(metrics) if metrics else None
        r = run_level(stub, pb, c, per_stream, args.tokens, args.mode)
        if before is not None:
            after = scrape(metrics)
            steps = after["resa_step_duration_seconds_count"] - \
                before["resa_step_duration_seconds_count"]
            step_s = (after["resa_step_duration_seconds_sum"] -
                      before["resa_step_duration_seconds_sum"]) / max(1.0, steps)
            batch = (after["resa_step_batch_size_sum"] - before["resa_step_batch_size_sum"]) / \
                max(1.0, after["resa_step_batch_size_count"] - before["resa_step_batch_size_count"])
            r["worker_step_mean_s"] = step_s
            r["worker_batch_mean"] = batch
            r["overhead_vs_worker_step"] = r["itl_mean_s"] / step_s - 1 if steps else None
            # The control plane's own share: plan round trips beyond the worker's execution
            # time (gRPC both ways, event handling, scheduling, idle gaps between plans).
            busy = after["resa_plan_worker_seconds_total"] - before["resa_plan_worker_seconds_total"]
            over = (after["resa_plan_overhead_seconds_total"] -
                    before["resa_plan_overhead_seconds_total"])
            r["control_plane_overhead"] = over / busy if busy > 0 else None
        r["overhead_vs_in_process_one_sequence"] = r["itl_mean_s"] / base["per_token_s"] - 1
        results.append(r)

    print(f"in-process baseline ({base['command']}): prefill {base['prefill_s'] * 1e3:.1f} ms "
          f"for {base['prompt_tokens']} tokens, decode {base['per_token_s'] * 1e3:.2f} ms/token "
          f"(one sequence)", file=sys.stderr)
    print("| streams | req/s | tok/s | TTFT p50/p90/p99 ms | ITL p50/p90/p99 ms | worker step ms "
          "(batch) | ITL/step - 1 | ITL/in-process - 1 | control-plane overhead |", file=sys.stderr)
    for r in results:
        t, i = r["ttft_s"], r["itl_s"]
        step = (f"{r['worker_step_mean_s'] * 1e3:.2f} ({r['worker_batch_mean']:.1f})"
                if "worker_step_mean_s" in r else "n/a")
        ovw = (f"{r['overhead_vs_worker_step']:+.1%}" if r.get("overhead_vs_worker_step")
               is not None else "n/a")
        print(f"| {r['concurrency']:7d} | {r['requests_per_s']:5.2f} | {r['tokens_per_s']:5.1f} | "
              f"{t['p50'] * 1e3:.0f}/{t['p90'] * 1e3:.0f}/{t['p99'] * 1e3:.0f} | "
              f"{i['p50'] * 1e3:.1f}/{i['p90'] * 1e3:.1f}/{i['p99'] * 1e3:.1f} | {step} | {ovw} | "
              f"{r['overhead_vs_in_process_one_sequence']:+.1%} | "
              + (f"{r['control_plane_overhead']:.2%} |" if r.get("control_plane_overhead")
                 is not None else "n/a |")
              + (f" ({r['errors']} errors: {r['first_error']})" if r["errors"] else ""),
              file=sys.stderr)
    report = {"bench": "serve", "server": server, "threads": threads, "tokens": args.tokens,
              "mode": args.mode, "baseline_in_process": base, "levels": results}
    if args.json:
        text = json.dumps(report, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    if cluster is not None:
        cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
