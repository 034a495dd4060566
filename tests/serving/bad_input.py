#!/usr/bin/env python3
"""Bad requests against a real `resa serve` over a real socket: each must fail with the right
gRPC status and a message naming the problem, the server must stay up, and a normal request must
work afterwards. Also: oversized messages (RESOURCE_EXHAUSTED from gRPC), invalid UTF-8 on the
wire, unknown job ids, and a full queue (RESOURCE_EXHAUSTED).

usage: bad_input.py BIN_DIR WORK_DIR
"""

import sys
import time

import serving_harness as h

INVALID = "INVALID_ARGUMENT"


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def raw_field(number, payload):
    """A length-delimited protobuf field: what a buggy client could put on the wire for a string
    (the Python library refuses to encode invalid UTF-8 itself)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def main():
    args = h.test_args()
    stubs = h.load_stubs()
    import grpc  # noqa: PLC0415
    c = h.Checks()
    cluster = h.Cluster(args.bin_dir, args.work)
    srv = h.Server(cluster, stubs, ctx=256, max_batch=2, split=args.split)
    pb = srv.pb
    srv.wait_serving()

    def works(name):
        try:
            resp, toks, _ = srv.generate(srv.request("Hello", max_tokens=4), timeout=120)
            ok = resp[-1].state == pb.JOB_STATE_FINISHED and len(toks) > 0
            c.check(f"{name}: a normal request still works", ok)
        except grpc.RpcError as e:
            c.check(f"{name}: a normal request still works", False,
                    f"{e.code().name}: {e.details()}")

    def expect(name, code, words, request=None, call=None):
        """Runs Generate(request) (or call()) and expects status `code` whose message contains
        one of `words` (case-insensitive)."""
        try:
            if call is not None:
                call()
            else:
                list(srv.stub.Generate(request, timeout=60))
            c.check(f"{name} -> {code}", False, "succeeded")
        except grpc.RpcError as e:
            msg = e.details() or ""
            ok = e.code().name == code and any(w.lower() in msg.lower() for w in words)
            c.check(f"{name} -> {code}", ok, f"{e.code().name}: {msg[:200]}")
        alive = cluster.procs[srv.name].poll() is None
        if not alive:
            c.check(f"{name}: server alive", False, cluster.tail(srv.name))

    S, R = pb.SamplingSettings, pb.ResaSettings
    long_prompt = "word " * 400  # ~400 tokens, over --ctx 256
    cases = [
        ("empty prompt", srv.request("", max_tokens=4), ["prompt"]),
        ("prompt over the context", srv.request(long_prompt, max_tokens=4),
         ["context", "ctx", "too long"]),
        ("prompt + max_tokens over the context", srv.request("Hello " * 100, max_tokens=250),
         ["context", "ctx", "max_tokens"]),
        ("max_tokens 0", srv.request("Hello", max_tokens=0), ["max_tokens"]),
        ("max_tokens negative", srv.request("Hello", max_tokens=-5), ["max_tokens"]),
        ("max_tokens huge", srv.request("Hello", max_tokens=1 << 30), ["max_tokens", "context"]),
        ("negative temperature", srv.request("Hello", sampling=S(temperature=-1)),
         ["temperature"]),
        ("NaN temperature", srv.request("Hello", sampling=S(temperature=float("nan"))),
         ["temperature"]),
        ("top_p > 1", srv.request("Hello", sampling=S(top_p=1.5)), ["top_p"]),
        ("top_p 0", srv.request("Hello", sampling=S(top_p=0)), ["top_p"]),
        ("negative top_k", srv.request("Hello", sampling=S(top_k=-1)), ["top_k"]),
        ("sparse_ratio 0", srv.request("Hello", resa=R(sparse_ratio=0)), ["sparse_ratio"]),
        ("sparse_ratio > 1", srv.request("Hello", resa=R(sparse_ratio=1.5)), ["sparse_ratio"]),
        ("min_blocks 0", srv.request("Hello", resa=R(min_blocks=0)), ["min_blocks"]),
        ("rectify_every 0", srv.request("Hello", resa=R(rectify_every=0)), ["rectify_every"]),
        ("unknown decode mode", srv.request("Hello", resa=R(mode=42)), ["mode"]),
        ("negative timeout", srv.request("Hello", timeout_seconds=-1), ["timeout"]),
        ("prompt and messages", pb.GenerateRequest(
            prompt=b"Hello", messages=[pb.ChatMessage(role=b"user", content=b"Hi")]),
         ["exactly one", "prompt"]),
        ("unknown chat role", pb.GenerateRequest(
            messages=[pb.ChatMessage(role=b"wizard", content=b"Hi")]), ["role"]),
        ("token id out of range", pb.GenerateRequest(prompt_tokens=[1, 2, 10 ** 6]),
         ["token", "vocab"]),
        ("negative token id", pb.GenerateRequest(prompt_tokens=[-1]), ["token", "vocab"]),
        ("too many stop strings", srv.request("Hello", stop=[f"s{i}" for i in range(100)]),
         ["stop"]),
        ("empty stop string", srv.request("Hello", stop=[""]), ["stop"]),
        ("prompt over --max-prompt-bytes", srv.request("a" * (2 << 20), max_tokens=4),
         ["prompt", "bytes"]),
    ]
    for name, request, words in cases:
        expect(name, INVALID, words, request=request)
    works("after the invalid requests")

    # Submit validates like Generate.
    expect("Submit with an empty prompt", INVALID, ["prompt"],
           call=lambda: srv.stub.Submit(srv.request(""), timeout=30))

    # Unknown job ids.
    for rpc in ("GetJob", "CancelJob"):
        expect(f"{rpc} of an unknown job", "NOT_FOUND", ["no-such", "job"],
               call=lambda rpc=rpc: getattr(srv.stub, rpc)(pb.JobRequest(job_id="no-such-job"),
                                                           timeout=30))
    expect("GetJob with an empty id", "NOT_FOUND", ["job"],
           call=lambda: srv.stub.GetJob(pb.JobRequest(job_id=""), timeout=30))

    # A message over the server's limit (--max-message-bytes, 4 MiB by default): gRPC refuses it.
    expect("6 MiB request message", "RESOURCE_EXHAUSTED", ["message", "larger", "max"],
           request=srv.request("a" * (6 << 20), max_tokens=4))
    works("after the oversized message")

    # Invalid UTF-8 in the text fields (bytes on the wire: the server checks them itself and
    # names the field).
    for name, req, words in [
        ("invalid UTF-8 in prompt", pb.GenerateRequest(prompt=b"abc\xff\xfedef", max_tokens=4),
         ["prompt", "UTF-8"]),
        ("invalid UTF-8 in a chat message",
         pb.GenerateRequest(messages=[pb.ChatMessage(role=b"user", content=b"\xc3\x28 hi")],
                            max_tokens=4), ["messages", "UTF-8"]),
        ("invalid UTF-8 in a stop string", srv.request("Hello", stop=[b"\xe2\x82"]),
         ["stop[0]", "UTF-8"]),
    ]:
        expect(name, "INVALID_ARGUMENT", words, request=req)
        c.check(f"{name}: server alive", cluster.procs[srv.name].poll() is None)
    raw_gen = srv.channel.unary_stream("/resa.v1.Resa/Generate",
                                       request_serializer=lambda b: b,
                                       response_deserializer=pb.GenerateResponse.FromString)
    # Garbage that is not a GenerateRequest at all.
    try:
        list(raw_gen(b"\xff\xff\xff\xff\x0f", timeout=30))
        c.check("unparsable request -> error", False, "succeeded")
    except grpc.RpcError as e:
        c.check("unparsable request -> error", e.code() != grpc.StatusCode.OK,
                f"{e.code().name}: {e.details()}")
    works("after the malformed messages")
    cluster.close()

    # A full queue: one running job, a queue of 2, then RESOURCE_EXHAUSTED.
    cluster = h.Cluster(args.bin_dir, args.work + "/queue")
    srv = h.Server(cluster, stubs, extra=["--max-queue", "2"], ctx=512, max_batch=1,
                   name="serve-queue", split=args.split)
    srv.wait_serving()
    accepted, refused = [], []
    for i in range(6):
        try:
            accepted.append(srv.stub.Submit(srv.request(f"Story {i}:", max_tokens=300,
                                                        ignore_eos=True), timeout=30).job_id)
        except grpc.RpcError as e:
            refused.append(e)
    c.check("full queue -> RESOURCE_EXHAUSTED", len(refused) > 0 and all(
        e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue" in (e.details() or "").lower()
        for e in refused), f"accepted {len(accepted)}, refused " +
        "; ".join(f"{e.code().name}: {e.details()}" for e in refused[:2]))
    c.check("queue of 2 + 1 running accepted", 2 <= len(accepted) <= 3, str(len(accepted)))
    try:
        list(srv.stub.Generate(srv.request("Hi", max_tokens=4), timeout=30))
        c.check("Generate on a full queue -> RESOURCE_EXHAUSTED", False, "succeeded")
    except grpc.RpcError as e:
        c.check("Generate on a full queue -> RESOURCE_EXHAUSTED",
                e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, f"{e.code().name}: {e.details()}")
    for job in accepted:
        srv.stub.CancelJob(pb.JobRequest(job_id=job), timeout=30)
    h.wait_for(lambda: all(srv.stub.GetJob(pb.JobRequest(job_id=j), timeout=30).state ==
                           pb.JOB_STATE_CANCELLED for j in accepted), 20, "jobs cancelled")
    time.sleep(0.2)
    works("after the queue drained")
    cluster.close()
    return c.finish()


if __name__ == "__main__":
    sys.exit(main())
