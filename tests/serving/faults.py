#!/usr/bin/env python3
"""Faults with real processes over real sockets:
  1. a client that cancels mid-stream, and one killed mid-stream (kill -9 of resa-client): the
     job ends CANCELLED within a few seconds;
  2. a gRPC deadline and a request timeout_seconds: the job ends, with reason DEADLINE;
  3. resa-worker killed with SIGKILL mid-job: its jobs fail with UNAVAILABLE within the heartbeat
     timeout, Health turns NOT_SERVING, the coordinator stays up and refuses new jobs with
     UNAVAILABLE; a restarted worker re-registers and serves again;
  4. resa-worker frozen with SIGSTOP (a hung rank): the same, detected by the heartbeat alone;
  5. SIGTERM to the coordinator: running jobs finish, new ones get UNAVAILABLE, exit code 0.

usage: faults.py BIN_DIR WORK_DIR [--only NAME]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time

import serving_harness as h

HEARTBEAT = 3.0  # --heartbeat-timeout of the split-mode coordinators


def job_state(srv, job):
    return srv.pb.JobState.Name(srv.stub.GetJob(srv.pb.JobRequest(job_id=job), timeout=10).state)


def wait_state(srv, job, states, timeout):
    """Polls GetJob until the job's state is in `states`; returns (state, seconds waited)."""
    start = time.monotonic()
    state = job_state(srv, job)
    while state not in states and time.monotonic() - start < timeout:
        time.sleep(0.1)
        state = job_state(srv, job)
    return state, time.monotonic() - start


class Stream(threading.Thread):
    """A Generate call read on its own thread: tokens, the final message or the error, and when."""

    def __init__(self, srv, request, timeout=300):
        super().__init__(daemon=True)
        self.srv, self.request, self.timeout = srv, request, timeout
        self.tokens, self.job, self.last, self.error, self.ended = [], None, None, None, None
        self.first = threading.Event()
        self.call = None

    def run(self):
        try:
            self.call = self.srv.stub.Generate(self.request, timeout=self.timeout)
            for r in self.call:
                self.job = self.job or r.job_id
                self.tokens += list(r.token_ids)
                if self.tokens:
                    self.first.set()
                if r.done:
                    self.last = r
        except self.srv.grpc.RpcError as e:
            self.error = e
        self.ended = time.monotonic()
        self.first.set()


def test_client_cancel(c, stubs, bin_dir, work, split):
    cluster = h.Cluster(bin_dir, work)
    srv = h.Server(cluster, stubs, ctx=1024, max_batch=4, split=split)
    srv.wait_serving()
    pb = srv.pb
    # (a) the client cancels its call after the first tokens.
    s = Stream(srv, srv.request("Count slowly:", max_tokens=500, ignore_eos=True))
    s.start()
    c.check("stream started", s.first.wait(120) and s.job is not None)
    s.call.cancel()
    s.join(10)
    state, waited = wait_state(srv, s.job, ("JOB_STATE_CANCELLED",), 10)
    c.check("client cancel -> job CANCELLED", state == "JOB_STATE_CANCELLED",
            f"{state} after {waited:.1f}s")
    info = srv.stub.GetJob(pb.JobRequest(job_id=s.job), timeout=10)
    c.check("cancelled job reason CANCELLED", info.finish_reason == pb.FINISH_REASON_CANCELLED,
            pb.FinishReason.Name(info.finish_reason))
    listed = srv.stub.ListJobs(pb.ListJobsRequest(states=[pb.JOB_STATE_CANCELLED]),
                               timeout=10).jobs
    c.check("ListJobs shows it cancelled", s.job in [j.job_id for j in listed])

    # (b) resa-client killed with SIGKILL mid-stream: the connection just drops.
    client = subprocess.Popen(
        [os.path.join(bin_dir, "resa-client"), "--server", srv.addr, "generate", "--json",
         "-p", "Count slowly:", "-n", "500", "--ignore-eos"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        job = None
        for line in client.stdout:
            msg = json.loads(line)
            job = msg.get("job_id")
            if msg.get("token_ids"):
                break
        client.kill()
        client.wait(10)
        c.check("resa-client streamed a job", job is not None)
        state, waited = wait_state(srv, job, ("JOB_STATE_CANCELLED",), 10)
        c.check("killed client -> job CANCELLED", state == "JOB_STATE_CANCELLED",
                f"{state} after {waited:.1f}s")
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()

    # (c) the gRPC deadline passes mid-generation.
    s = Stream(srv, srv.request("Count slowly:", max_tokens=500, ignore_eos=True), timeout=3)
    s.start()
    s.join(30)
    c.check("gRPC deadline -> DEADLINE_EXCEEDED", s.error is not None and
            s.error.code() == srv.grpc.StatusCode.DEADLINE_EXCEEDED,
            s.error.code().name if s.error else "no error")
    if s.job:
        state, waited = wait_state(srv, s.job, ("JOB_STATE_CANCELLED", "JOB_STATE_FINISHED",
                                                "JOB_STATE_FAILED"), 10)
        info = srv.stub.GetJob(pb.JobRequest(job_id=s.job), timeout=10)
        c.check("deadline job ended", state != "JOB_STATE_RUNNING" and
                info.finish_reason in (pb.FINISH_REASON_DEADLINE, pb.FINISH_REASON_CANCELLED),
                f"{state} {pb.FinishReason.Name(info.finish_reason)} after {waited:.1f}s")
    # (d) timeout_seconds of the request.
    resp, toks, _ = srv.generate(srv.request("Count slowly:", max_tokens=500, ignore_eos=True,
                                             timeout_seconds=2.0), timeout=60)
    last = resp[-1]
    c.check("timeout_seconds -> reason DEADLINE", last.done and
            last.finish_reason == pb.FINISH_REASON_DEADLINE and len(toks) < 500,
            f"{pb.JobState.Name(last.state)} {pb.FinishReason.Name(last.finish_reason)} "
            f"{len(toks)} tokens, total {last.report.total_seconds:.2f}s")
    c.check("server alive after client faults", cluster.procs[srv.name].poll() is None)
    cluster.close()


def test_worker_loss(c, stubs, bin_dir, work, sig):
    """Kills (SIGKILL) or freezes (SIGSTOP) the worker mid-job."""
    tag = "killed" if sig == signal.SIGKILL else "frozen"
    cluster = h.Cluster(bin_dir, work)
    srv = h.Server(cluster, stubs, split=True, ctx=1024, max_batch=4,
                   extra=["--heartbeat-timeout", str(HEARTBEAT)], name="coordinator")
    srv.wait_serving()
    pb = srv.pb
    s = Stream(srv, srv.request("Count slowly:", max_tokens=1000, ignore_eos=True))
    s.start()
    c.check(f"[{tag}] stream started", s.first.wait(120))
    queued = srv.stub.Submit(srv.request("Another story:", max_tokens=1000, ignore_eos=True),
                             timeout=10).job_id
    t0 = time.monotonic()
    cluster.kill("worker", sig)
    s.join(HEARTBEAT + 15)
    took = (s.ended or time.monotonic()) - t0
    c.check(f"[{tag}] stream fails with UNAVAILABLE within the heartbeat timeout",
            s.error is not None and s.error.code() == srv.grpc.StatusCode.UNAVAILABLE and
            took <= HEARTBEAT + 5,
            (f"{s.error.code().name}: {s.error.details()}" if s.error else
             f"no error (last={s.last is not None})") + f" after {took:.1f}s")
    state, _ = wait_state(srv, queued, ("JOB_STATE_FAILED",), 10)
    info = srv.stub.GetJob(pb.JobRequest(job_id=queued), timeout=10)
    c.check(f"[{tag}] submitted job FAILED with an error", state == "JOB_STATE_FAILED" and
            info.error != "", f"{state}: {info.error}")
    h.wait_for(lambda: srv.health_status() == "NOT_SERVING", 10, "NOT_SERVING")
    c.check(f"[{tag}] health NOT_SERVING", srv.health_status() == "NOT_SERVING")
    c.check(f"[{tag}] coordinator still up", cluster.procs["coordinator"].poll() is None)
    try:
        list(srv.stub.Generate(srv.request("Hi", max_tokens=4), timeout=10))
        c.check(f"[{tag}] new job without a worker -> UNAVAILABLE", False, "succeeded")
    except srv.grpc.RpcError as e:
        c.check(f"[{tag}] new job without a worker -> UNAVAILABLE",
                e.code() == srv.grpc.StatusCode.UNAVAILABLE, f"{e.code().name}: {e.details()}")
    info = srv.stub.ModelInfo(pb.ModelInfoRequest(), timeout=10)
    c.check(f"[{tag}] ModelInfo worker_ready false", not info.worker_ready)

    cluster.kill("worker", signal.SIGKILL)  # a frozen worker is killed for good
    cluster.procs["worker"].wait(10)
    srv.start_worker("worker2")
    srv.wait_serving(120)
    c.check(f"[{tag}] restarted worker: SERVING", srv.health_status() == "SERVING")
    resp, toks, _ = srv.generate(srv.request("Hello", max_tokens=6), timeout=120)
    c.check(f"[{tag}] restarted worker serves", resp[-1].state == pb.JOB_STATE_FINISHED and
            len(toks) > 0)
    cluster.close()


def test_drain(c, stubs, bin_dir, work):
    cluster = h.Cluster(bin_dir, work)
    srv = h.Server(cluster, stubs, split=True, ctx=1024, max_batch=4,
                   extra=["--drain-timeout", "60"], name="coordinator")
    srv.wait_serving()
    pb = srv.pb
    streams = [Stream(srv, srv.request(f"Story {i}:", max_tokens=40, ignore_eos=True))
               for i in range(2)]
    for s in streams:
        s.start()
    for s in streams:
        s.first.wait(120)
    coord = cluster.procs["coordinator"]
    coord.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    try:
        list(srv.stub.Generate(srv.request("Hi", max_tokens=4), timeout=10))
        c.check("draining: new job -> UNAVAILABLE", False, "succeeded")
    except srv.grpc.RpcError as e:
        c.check("draining: new job -> UNAVAILABLE", e.code() == srv.grpc.StatusCode.UNAVAILABLE,
                f"{e.code().name}: {e.details()}")
    for i, s in enumerate(streams):
        s.join(120)
        c.check(f"draining: running job {i} finished", s.error is None and s.last is not None
                and s.last.state == pb.JOB_STATE_FINISHED and len(s.tokens) == 40,
                (f"{s.error.code().name}: {s.error.details()}" if s.error else
                 f"{len(s.tokens)} tokens"))
    try:
        rc = coord.wait(60)
    except subprocess.TimeoutExpired:
        rc = None
    c.check("coordinator exits 0 after the drain", rc == 0, f"exit {rc}\n{cluster.tail('coordinator')}"
            if rc != 0 else "")
    worker = cluster.procs["worker"]
    try:
        wrc = worker.wait(30)
    except subprocess.TimeoutExpired:
        wrc = None
    c.check("worker shut down with the coordinator", wrc == 0, f"exit {wrc}")
    cluster.close()


def test_drain_serve(c, stubs, bin_dir, work):
    """SIGTERM to `resa serve` drains and exits 0 even when a library started threads before main
    could block the signal: the pthread build of OpenBLAS does (its pool starts in a load-time
    constructor), so it is used when installed."""
    pthread_blas = "/usr/lib/x86_64-linux-gnu/openblas-pthread"
    env = None
    if os.path.isfile(os.path.join(pthread_blas, "libopenblas.so.0")):
        env = {"LD_LIBRARY_PATH": pthread_blas + ":" + os.environ.get("LD_LIBRARY_PATH", "")}
    else:
        print("note: the pthread OpenBLAS is not installed; resa serve runs with its own BLAS")
    cluster = h.Cluster(bin_dir, work)
    srv = h.Server(cluster, stubs, ctx=1024, max_batch=4, env=env)
    srv.wait_serving()
    toks = list(srv.stub.Generate(srv.request("Hi", max_tokens=4), timeout=60))
    c.check("resa serve answers before the signal", len(toks) > 0)
    proc = cluster.procs[srv.name]
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(60)
    except subprocess.TimeoutExpired:
        rc = None
    c.check("resa serve exits 0 after SIGTERM (pthread OpenBLAS: %s)" % (env is not None),
            rc == 0, f"exit {rc}\n{cluster.tail(srv.name)}" if rc != 0 else "")
    c.check("resa serve logged the drain", "drained" in cluster.log(srv.name))
    cluster.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin_dir")
    ap.add_argument("work")
    ap.add_argument("--only", choices=["client", "kill", "stop", "drain", "drain-serve"])
    ap.add_argument("--split", action="store_true",
                    help="client scenarios against resa-coordinator + resa-worker too")
    args = ap.parse_args()
    stubs = h.load_stubs()
    c = h.Checks()
    tests = {
        "client": lambda: test_client_cancel(c, stubs, args.bin_dir, args.work + "/client",
                                             args.split),
        "kill": lambda: test_worker_loss(c, stubs, args.bin_dir, args.work + "/kill",
                                         signal.SIGKILL),
        "stop": lambda: test_worker_loss(c, stubs, args.bin_dir, args.work + "/stop",
                                         signal.SIGSTOP),
        "drain": lambda: test_drain(c, stubs, args.bin_dir, args.work + "/drain"),
        "drain-serve": lambda: test_drain_serve(c, stubs, args.bin_dir, args.work + "/drain-serve"),
    }
    for name, fn in tests.items():
        if args.only and name != args.only:
            continue
        print(f"--- {name}", flush=True)
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - one broken scenario must not hide the others
            c.check(f"{name} scenario ran", False, f"{type(e).__name__}: {e}")
        finally:
            h.Cluster.close_all()
    return c.finish()


if __name__ == "__main__":
    sys.exit(main())
