#!/usr/bin/env python3
"""An independent Python client (grpcio, stubs generated from proto/resa.proto at test time)
calls every RPC of resa.v1.Resa, grpc.health.v1.Health.Check and server reflection against a real
`resa serve` (or, with --split, resa-coordinator + resa-worker) on a free loopback port, and
checks the answers.

usage: python_client.py BIN_DIR WORK_DIR [--split]
"""

import re
import sys
import time
import urllib.request

import serving_harness as h


def reflection_services(channel):
    """Service names listed by server reflection (v1alpha, what gRPC 1.51 C++ serves)."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc  # noqa: PLC0415
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    req = reflection_pb2.ServerReflectionRequest(list_services="")
    sym = reflection_pb2.ServerReflectionRequest(file_containing_symbol="resa.v1.Resa")
    names, files = [], []
    for resp in stub.ServerReflectionInfo(iter([req, sym]), timeout=30):
        if resp.HasField("list_services_response"):
            names += [s.name for s in resp.list_services_response.service]
        if resp.HasField("file_descriptor_response"):
            files += list(resp.file_descriptor_response.file_descriptor_proto)
    return names, files


def main():
    args = h.test_args()
    stubs = h.load_stubs()
    import grpc  # noqa: PLC0415
    c = h.Checks()
    cluster = h.Cluster(args.bin_dir, args.work)
    # Metrics from `resa serve` (one process) or resa-coordinator (--split). In CUDA builds the
    # HTTP server's threads once failed to start under cuBLAS's static TLS (runtime/core/
    # thread_stacks.cc); this checks both programs in every build.
    metrics_addr = f"127.0.0.1:{h.free_port()}"
    srv = h.Server(cluster, stubs, split=args.split, ctx=1024, max_batch=4,
                   extra=["--metrics-listen", metrics_addr])
    pb = srv.pb
    srv.wait_serving()

    # Health and reflection.
    c.check("health SERVING", srv.health_status() == "SERVING")
    try:
        names, files = reflection_services(srv.channel)
        c.check("reflection lists resa.v1.Resa and Health",
                "resa.v1.Resa" in names and "grpc.health.v1.Health" in names, str(names))
        c.check("reflection serves resa.proto", any(b"GenerateRequest" in f for f in files))
    except ImportError:
        print("skip reflection: grpcio-reflection is not installed in this Python")

    # ModelInfo.
    info = srv.stub.ModelInfo(pb.ModelInfoRequest(), timeout=30)
    c.check("ModelInfo architecture", info.architecture == "llama", info.architecture)
    c.check("ModelInfo shape", (info.vocab_size, info.num_layers, info.num_heads,
                                info.num_kv_heads, info.head_dim) == (49152, 30, 9, 3, 64),
            f"{info.vocab_size} {info.num_layers} {info.num_heads} {info.num_kv_heads} "
            f"{info.head_dim}")
    c.check("ModelInfo worker ready", info.worker_ready and info.tp == 1 and info.sp == 1)
    c.check("ModelInfo context and batch", info.max_context == 1024 and info.max_batch == 4,
            f"{info.max_context} {info.max_batch}")
    c.check("ModelInfo KV pages", info.kv_pages > 0 and 0 <= info.kv_pages_free <= info.kv_pages,
            f"{info.kv_pages_free}/{info.kv_pages}")
    c.check("ModelInfo default ReSA", info.default_resa.mode == pb.DECODE_MODE_RESA and
            abs(info.default_resa.sparse_ratio - 0.1) < 1e-6 and
            info.default_resa.rectify_every == 32, str(info.default_resa).replace("\n", " "))

    # Generate: a greedy prompt.
    req = srv.request("The capital of France is", max_tokens=12, client_tag="py-1")
    responses, tokens, text = srv.generate(req)
    last = responses[-1]
    job_ids = {r.job_id for r in responses}
    c.check("Generate one job id", len(job_ids) == 1 and "" not in job_ids, str(job_ids))
    c.check("Generate only the last message is done",
            last.done and not any(r.done for r in responses[:-1]))
    c.check("Generate finished", last.state == pb.JOB_STATE_FINISHED and last.finish_reason in
            (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_EOS),
            f"{pb.JobState.Name(last.state)} {pb.FinishReason.Name(last.finish_reason)}")
    rep = last.report
    c.check("Generate report counts tokens", rep.generated_tokens == len(tokens) and
            0 < len(tokens) <= 12 and rep.prompt_tokens > 0,
            f"{rep.generated_tokens} vs {len(tokens)}, prompt {rep.prompt_tokens}")
    c.check("Generate report timings", 0 <= rep.queue_seconds <= rep.time_to_first_token_seconds
            <= rep.total_seconds and rep.total_seconds > 0,
            f"queue {rep.queue_seconds} ttft {rep.time_to_first_token_seconds} "
            f"total {rep.total_seconds}")
    c.check("Generate text is UTF-8", len(text.decode("utf-8")) > 0, repr(text))
    print(f"     text: {text!r}")
    again = srv.generate(req)[1]
    c.check("Generate greedy is deterministic", again == tokens, f"{again} vs {tokens}")

    # Chat messages (rendered with the chat template).
    chat = pb.GenerateRequest(messages=[pb.ChatMessage(role=b"user",
                                                       content=b"What is the capital of France?")],
                              max_tokens=24)
    _, _, chat_text = srv.generate(chat)
    c.check("Generate chat answers Paris", b"paris" in chat_text.lower(), repr(chat_text))

    # prompt_tokens.
    _, tok_out, _ = srv.generate(pb.GenerateRequest(prompt_tokens=tokens[:6], max_tokens=4))
    c.check("Generate from prompt_tokens", 0 < len(tok_out) <= 4, str(tok_out))

    # Stop strings: the text ends before the first occurrence, and the reason is STOP.
    long_req = srv.request("Once upon a time", max_tokens=24, ignore_eos=True)
    _, _, full = srv.generate(long_req)
    words = full.decode("utf-8", "replace").split()
    if len(words) >= 4:
        stop = " " + words[3]
        cut = full.decode("utf-8", "replace").find(stop)
        stop_req = srv.request("Once upon a time", max_tokens=24, ignore_eos=True, stop=[stop])
        sresp, _, stext = srv.generate(stop_req)
        c.check("stop string ends the text before it",
                sresp[-1].finish_reason == pb.FINISH_REASON_STOP and
                stext.decode("utf-8", "replace") == full.decode("utf-8", "replace")[:cut],
                f"stop {stop!r}: {stext!r} (full {full!r})")
    else:
        c.check("stop string setup", False, f"too few words in {full!r}")

    # Seeded sampling repeats itself.
    samp = srv.request("Tell me a story", max_tokens=10,
                       sampling=pb.SamplingSettings(temperature=0.9, top_k=40, top_p=0.95,
                                                    seed=1234))
    s1, s2 = srv.generate(samp)[1], srv.generate(samp)[1]
    c.check("seeded sampling is reproducible", s1 == s2 and len(s1) > 0, f"{s1} vs {s2}")

    # ReSA settings reach the worker: dense reads every block, sparse fewer, ReSA rectifies.
    long_prompt = " ".join(f"item {i}," for i in range(120))
    dense = srv.generate(srv.request(long_prompt, max_tokens=8, ignore_eos=True,
                                     resa=pb.ResaSettings(mode=pb.DECODE_MODE_DENSE)))[0][-1]
    sparse = srv.generate(srv.request(long_prompt, max_tokens=8, ignore_eos=True,
                                      resa=pb.ResaSettings(mode=pb.DECODE_MODE_SPARSE,
                                                           sparse_ratio=0.1, min_blocks=1)))[0][-1]
    resa = srv.generate(srv.request(long_prompt, max_tokens=12, ignore_eos=True,
                                    resa=pb.ResaSettings(mode=pb.DECODE_MODE_RESA, min_blocks=1,
                                                         rectify_every=4)))[0][-1]
    c.check("dense reads every block", dense.report.blocks_total > 0 and
            dense.report.blocks_read == dense.report.blocks_total,
            f"{dense.report.blocks_read}/{dense.report.blocks_total}")
    c.check("sparse reads fewer blocks", 0 < sparse.report.blocks_read <
            sparse.report.blocks_total and sparse.report.rectifications == 0 and
            sparse.report.sparse_steps > 0,
            f"{sparse.report.blocks_read}/{sparse.report.blocks_total} sparse steps "
            f"{sparse.report.sparse_steps}")
    c.check("resa rectifies every 4 tokens", resa.report.rectifications >= 2 and
            resa.report.rectified_tokens >= 8,
            f"rectifications {resa.report.rectifications} tokens "
            f"{resa.report.rectified_tokens}")

    # Submit + GetJob: the same greedy tokens as Generate, the tag echoed.
    job = srv.stub.Submit(req, timeout=30).job_id
    c.check("Submit returns a job id", job != "" and job not in job_ids, job)
    got = None
    end = time.monotonic() + 120
    while time.monotonic() < end:
        got = srv.stub.GetJob(pb.JobRequest(job_id=job), timeout=30)
        if got.state in (pb.JOB_STATE_FINISHED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED):
            break
        time.sleep(0.1)
    c.check("GetJob finished with Generate's tokens", got.state == pb.JOB_STATE_FINISHED and
            list(got.token_ids) == tokens and got.text == text,
            f"{pb.JobState.Name(got.state)} {list(got.token_ids)} vs {tokens}")
    c.check("GetJob echoes client_tag and times", got.client_tag == b"py-1" and
            abs(got.submitted_unix_seconds - time.time()) < 600, got.client_tag)

    # ListJobs: all, filtered by state, limited.
    all_jobs = srv.stub.ListJobs(pb.ListJobsRequest(), timeout=30).jobs
    c.check("ListJobs includes the submitted job", job in [j.job_id for j in all_jobs],
            f"{len(all_jobs)} jobs")
    finished = srv.stub.ListJobs(pb.ListJobsRequest(states=[pb.JOB_STATE_FINISHED]),
                                 timeout=30).jobs
    c.check("ListJobs filters by state", len(finished) > 0 and
            all(j.state == pb.JOB_STATE_FINISHED for j in finished))
    one = srv.stub.ListJobs(pb.ListJobsRequest(limit=1), timeout=30).jobs
    c.check("ListJobs honours limit", len(one) == 1, str(len(one)))

    # CancelJob on a long job.
    long_job = srv.stub.Submit(srv.request("Count to one thousand:", max_tokens=400,
                                           ignore_eos=True), timeout=30).job_id
    time.sleep(0.5)
    cancelled = srv.stub.CancelJob(pb.JobRequest(job_id=long_job), timeout=30)
    state = cancelled.state
    end = time.monotonic() + 10
    while state != pb.JOB_STATE_CANCELLED and time.monotonic() < end:
        time.sleep(0.1)
        state = srv.stub.GetJob(pb.JobRequest(job_id=long_job), timeout=30).state
    c.check("CancelJob cancels", state == pb.JOB_STATE_CANCELLED, pb.JobState.Name(state))

    # Unknown ids.
    for rpc in ("GetJob", "CancelJob"):
        try:
            getattr(srv.stub, rpc)(pb.JobRequest(job_id="no-such-job"), timeout=30)
            c.check(f"{rpc} unknown id -> NOT_FOUND", False, "succeeded")
        except grpc.RpcError as e:
            c.check(f"{rpc} unknown id -> NOT_FOUND", e.code() == grpc.StatusCode.NOT_FOUND,
                    f"{e.code().name}: {e.details()}")

    # Prometheus metrics over HTTP reflect the traffic above.
    text = urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=10).read().decode()

    def value(series):
        m = re.search(rf"^{re.escape(series)} ([0-9.eE+-]+)$", text, re.M)
        return float(m.group(1)) if m else None
    for series, want in [("resa_worker_ready", lambda v: v == 1),
                         ("resa_generated_tokens_total", lambda v: v >= len(tokens)),
                         ("resa_prompt_tokens_total", lambda v: v > 0),
                         ("resa_time_to_first_token_seconds_count", lambda v: v >= 1),
                         ("resa_step_duration_seconds_count", lambda v: v >= 1),
                         ("resa_rectification_passes_total", lambda v: v >= 2),
                         ("resa_attention_blocks_read_ratio", lambda v: 0 < v <= 1),
                         ("resa_kv_pages_capacity", lambda v: v == info.kv_pages),
                         ('resa_jobs_ended_total{state="cancelled"}', lambda v: v >= 1)]:
        v = value(series)
        c.check(f"metrics {series}", v is not None and want(v), str(v))
    c.check("server still running", cluster.procs[srv.name].poll() is None)
    cluster.close()
    return c.finish()


if __name__ == "__main__":
    sys.exit(main())
