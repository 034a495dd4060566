"""Shared pieces of the serving tests: real processes on free loopback ports, Python stubs
generated from proto/resa.proto at test time, and cleanup that never leaves a process behind.

Every process a test starts goes through Cluster.start(); Cluster.close() (also run at exit and
on SIGTERM/SIGINT, e.g. a ctest timeout) kills each of them by pid.
"""

import atexit
import importlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

SKIP = 77  # ctest SKIP_RETURN_CODE

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                     "resa", "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def skip(why):
    print(f"SKIPPED: {why}")
    sys.exit(SKIP)


def _protoc(args):
    """grpc_tools.protoc (PyPI grpcio-tools); Debian's protoc + grpc_python_plugin when that is
    missing or too old for the proto (Debian's python3-grpc-tools 1.14 is)."""
    try:
        from grpc_tools import protoc  # noqa: PLC0415
        if protoc.main(["grpc_tools.protoc"] + args) == 0:
            return 0
        print("note: grpc_tools.protoc failed; trying /usr/bin/protoc + grpc_python_plugin")
    except ImportError:
        pass
    return subprocess.call(
        ["protoc", "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin"] + args)


def generate_stubs(out_dir):
    """Compiles resa.proto and grpc/health/v1/health.proto into out_dir with grpc_tools.protoc
    (falling back to Debian's protoc + grpc_python_plugin) and imports them: returns (pb, pb_grpc,
    health_pb, health_grpc). health.proto is compiled from its own folder so that its modules are
    top-level (health_pb2) instead of shadowing the grpc package; the service name stays
    grpc.health.v1.Health."""
    proto_dir = os.path.join(SRC, "proto")
    for include, proto in ((proto_dir, "resa.proto"),
                           (os.path.join(proto_dir, "grpc", "health", "v1"), "health.proto")):
        rc = _protoc([f"-I{include}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
                      proto])
        if rc != 0:
            raise RuntimeError(f"protoc failed ({rc}) on {proto}")
    sys.path.insert(0, out_dir)
    return (importlib.import_module("resa_pb2"), importlib.import_module("resa_pb2_grpc"),
            importlib.import_module("health_pb2"), importlib.import_module("health_pb2_grpc"))


def load_stubs():
    """Stubs for this run (in a temporary folder removed at exit), or skip without grpcio."""
    try:
        import grpc  # noqa: F401,PLC0415
    except ImportError:
        skip(f"{sys.executable} lacks grpcio (./scripts/install_deps.sh --python installs it)")
    if not os.path.isfile(MODEL):
        skip(f"default model not found at {MODEL} (run ./scripts/fetch_model.sh)")
    out = tempfile.mkdtemp(prefix="resa_stubs_")
    atexit.register(lambda: subprocess.call(["rm", "-rf", out]))
    return generate_stubs(out)


_handed_out = set()


def free_port():
    """A loopback port nothing listens on now, never one this process handed out before (the
    kernel may give a just-released port again: the metrics and gRPC ports of one server would
    then collide)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def test_args(add=None):
    """The arguments every serving test takes (BIN_DIR WORK [--split]), plus its own (`add`
    receives the parser)."""
    import argparse  # noqa: PLC0415
    ap = argparse.ArgumentParser()
    ap.add_argument("bin_dir")
    ap.add_argument("work")
    ap.add_argument("--split", action="store_true", help="resa-coordinator + resa-worker")
    if add is not None:
        add(ap)
    return ap.parse_args()


def utf8(text):
    """str -> UTF-8 bytes (the API's text fields are bytes); bytes pass through."""
    return text.encode() if isinstance(text, str) else text

class Cluster:
    """Processes of one test. `work` holds their logs (NAME.log)."""

    instances = []

    @classmethod
    def close_all(cls):
        for cluster in cls.instances:
            cluster.close()

    def __init__(self, bin_dir, work):
        Cluster.instances.append(self)
        self.bin = bin_dir
        self.work = work
        os.makedirs(work, exist_ok=True)
        self.procs = {}
        atexit.register(self.close)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame):
        self.close()
        sys.exit(128 + signum)

    def binary(self, name):
        path = os.path.join(self.bin, name)
        if not os.access(path, os.X_OK):
            raise RuntimeError(f"{path} is not built (cmake --build BUILD --target {name})")
        return path

    def start(self, name, argv, env=None):
        """Starts argv[0] (a binary name in bin_dir, or a path) with its output in work/NAME.log."""
        exe = argv[0] if os.path.sep in argv[0] else self.binary(argv[0])
        log = open(os.path.join(self.work, f"{name}.log"), "ab")
        full_env = dict(os.environ, OMP_WAIT_POLICY="passive", **(env or {}))
        p = subprocess.Popen([exe] + argv[1:], stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=full_env)
        log.close()
        self.procs[name] = p
        return p

    def log(self, name):
        try:
            with open(os.path.join(self.work, f"{name}.log"), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def kill(self, name, sig=signal.SIGKILL):
        p = self.procs.get(name)
        if p is not None and p.poll() is None:
            p.send_signal(sig)

    def close(self):
        for name, p in list(self.procs.items()):
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    print(f"warning: {name} (pid {p.pid}) did not die")
        self.procs.clear()

    def tail(self, name, lines=30):
        return "\n".join(self.log(name).splitlines()[-lines:])


def wait_for(predicate, timeout, what, interval=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Checks:
    """Counts named checks; a failure is printed and counted, never raised, so one run reports
    every failing case."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"ok   {name}" + (f": {detail}" if detail else ""), flush=True)
        else:
            self.failed += 1
            print(f"FAIL {name}" + (f": {detail}" if detail else ""), flush=True)
        return ok

    def finish(self):
        print(f"{self.passed} passed, {self.failed} failed", flush=True)
        return 1 if self.failed else 0


class Server:
    """A `resa serve` (or coordinator + separate worker) with stubs bound to its port."""

    def __init__(self, cluster, stubs, extra=(), split=False, worker_extra=(), name="serve",
                 threads=2, ctx=1024, max_batch=8, env=None):
        import grpc  # noqa: PLC0415
        self.grpc = grpc
        self.pb, self.pb_grpc, self.hpb, self.hpb_grpc = stubs
        self.cluster = cluster
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.name = name
        self.split = split
        self.worker_extra = list(worker_extra)
        self.threads = threads
        self.ctx = ctx
        self.max_batch = max_batch
        common = ["--model", MODEL, "--listen", self.addr, "--ctx", str(ctx),
                  "--max-batch", str(max_batch)]
        if split:
            cluster.start(name, ["resa-coordinator", "--model", MODEL, "--listen", self.addr]
                          + list(extra))
            self.start_worker()
        else:
            cluster.start(name, ["resa", "serve", "--threads", str(threads)] + common + list(extra),
                          env=env)
        self.channel = grpc.insecure_channel(self.addr, options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20)])
        self.stub = self.pb_grpc.ResaStub(self.channel)
        self.health = self.hpb_grpc.HealthStub(self.channel)

    def start_worker(self, name="worker"):
        return self.cluster.start(name, ["resa-worker", "--model", MODEL, "--coordinator",
                                         self.addr, "--ctx", str(self.ctx), "--max-batch",
                                         str(self.max_batch), "--threads", str(self.threads)]
                                  + self.worker_extra)

    def health_status(self, timeout=2.0):
        try:
            r = self.health.Check(self.hpb.HealthCheckRequest(service=""), timeout=timeout)
            return self.hpb.HealthCheckResponse.ServingStatus.Name(r.status)
        except self.grpc.RpcError as e:
            return f"rpc error {e.code().name}"

    def wait_serving(self, timeout=120):
        def serving():
            p = self.cluster.procs.get(self.name)
            if p is not None and p.poll() is not None:
                raise AssertionError(f"{self.name} exited with {p.returncode}:\n"
                                     + self.cluster.tail(self.name))
            return self.health_status() == "SERVING"
        wait_for(serving, timeout, f"{self.name} on {self.addr} to report SERVING")

    def request(self, prompt="", max_tokens=16, **kw):
        """A greedy GenerateRequest; keyword arguments set other fields. Text (prompt, stop
        strings, client_tag) may be given as str: the API carries it as UTF-8 bytes."""
        if "stop" in kw:
            kw["stop"] = [utf8(s) for s in kw["stop"]]
        if "client_tag" in kw:
            kw["client_tag"] = utf8(kw["client_tag"])
        return self.pb.GenerateRequest(prompt=utf8(prompt), max_tokens=max_tokens, **kw)

    def generate(self, request, timeout=120):
        """Runs Generate to completion: (responses, token ids, text bytes)."""
        responses = list(self.stub.Generate(request, timeout=timeout))
        tokens = [t for r in responses for t in r.token_ids]
        text = b"".join(r.text for r in responses)
        return responses, tokens, text
