"""What the integration tests and scripts/bench_serve.py share.

- `load_api()`: Python stubs for proto/ generated at run time (never committed) and imported.
- `Serve`: one `tessera serve` under our control: a free port, its own log folder, startup until it
  prints `serving`, serve.json, ClusterStatus helpers, and teardown (SIGTERM, then SIGKILL after 10 s).
- `Offline`: `tessera generate` as the oracle, cached per (prompt, options).
- `Stream` / `run_parallel`: one Generate call collected with timestamps, and many at once with a
  deadline (no test may hang: every RPC carries a gRPC deadline, every join a timeout).

Run with the Debian interpreter (/usr/bin/python3): it has grpcio and grpc_tools.
"""

import atexit
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

try:
    import grpc
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("harness: no grpc module in %s; run with /usr/bin/python3 (python3-grpcio)" % sys.executable)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

# SmolLM2-135M: what the spec says the coordinator must enforce.
CONTEXT = 8192
VOCAB = 49152

# Serve processes alive now; conftest prints their logs when a test fails.
LIVE = set()


def default_tessera():
    return os.environ.get("TESSERA_BIN") or str(REPO / "build" / "tessera")


# ---------------------------------------------------------------------------------------------
# Stubs


_API = None
_API_LOCK = threading.Lock()


def load_api(outdir=None):
    """Generates the stubs into outdir (a temp dir when None) once per process and imports them.

    health.proto is compiled from a copy under tsr_health/ so that its Python package does not
    shadow the installed `grpc` package; its proto package (grpc.health.v1) and so the service
    name on the wire are unchanged.
    """
    global _API
    with _API_LOCK:
        if _API is not None:
            return _API
        if outdir is None:
            outdir = tempfile.mkdtemp(prefix="tessera-stubs-")
            atexit.register(shutil.rmtree, outdir, True)
        out = Path(outdir)
        src = out / "src"
        (src / "tsr_health" / "v1").mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "proto" / "grpc" / "health" / "v1" / "health.proto", src / "tsr_health" / "v1" / "health.proto")
        py = out / "py"
        py.mkdir(exist_ok=True)
        for include, files in ((REPO / "proto", ["tessera/v1/inference.proto", "tessera/v1/worker.proto"]),
                               (src, ["tsr_health/v1/health.proto"])):
            cmd = [sys.executable, "-m", "grpc_tools.protoc", "-I", str(include), "--python_out=" + str(py),
                   "--grpc_python_out=" + str(py)] + [str(include / f) for f in files]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise RuntimeError("protoc failed (%s):\n%s%s" % (" ".join(cmd), r.stdout, r.stderr))
        sys.path.insert(0, str(py))
        import importlib
        importlib.invalidate_caches()
        from tessera.v1 import inference_pb2, inference_pb2_grpc, worker_pb2, worker_pb2_grpc
        from tsr_health.v1 import health_pb2, health_pb2_grpc
        _API = types.SimpleNamespace(pb=inference_pb2, rpc=inference_pb2_grpc, worker_pb=worker_pb2,
                                     worker_rpc=worker_pb2_grpc, health_pb=health_pb2,
                                     health_rpc=health_pb2_grpc, dir=out)
        return _API


def api():
    return load_api()


# ---------------------------------------------------------------------------------------------
# Small utilities


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def port_open(host, port, timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path, n=40):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            lines = f.read().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError as e:
        return "(cannot read: %s)" % e


def wait_for(pred, timeout, interval=0.1, what="condition"):
    """Polls pred() until it returns a truthy value; returns it, or raises AssertionError."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - reported below
            last_exc = e
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.0f s waiting for %s%s" %
                                 (timeout, what, " (last error: %r)" % last_exc if last_exc else ""))
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# tessera serve


class ServeError(RuntimeError):
    pass


class Serve:
    """One `tessera serve` on 127.0.0.1:<free port> with its logs in a fresh folder."""

    def __init__(self, tessera, model, replicas=1, threads=None, extra=(), name="serve", startup_timeout=120):
        self.tessera, self.model, self.replicas = str(tessera), str(model), replicas
        self.threads, self.extra, self.name = threads, list(extra), name
        self.startup_timeout = startup_timeout
        self.proc = None
        self.channel = None
        self.base = Path(tempfile.mkdtemp(prefix="tessera-%s-" % name))
        self.dir = self.base / "run"  # --dir: serve's own logs and serve.json
        self.dir.mkdir()
        self.port = free_port()
        self.address = "127.0.0.1:%d" % self.port
        self.stop_rc = None
        self.last_info = None

    # -- lifecycle --

    def argv(self):
        a = [self.tessera, "serve", "--model", self.model, "--replicas", str(self.replicas), "--port",
             str(self.port), "--dir", str(self.dir)]
        if self.threads:
            a += ["--threads", str(self.threads)]
        return a + self.extra

    def start(self):
        self.out_path, self.err_path = self.base / "serve.stdout", self.base / "serve.stderr"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            # A session of its own: at teardown, whatever serve left behind in its process group
            # can be killed by that group id.
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         start_new_session=True, cwd=str(REPO))
        LIVE.add(self)
        deadline = time.monotonic() + self.startup_timeout
        try:
            while True:
                rc = self.proc.poll()
                if rc is not None:
                    raise ServeError("tessera serve exited with %d before printing 'serving'\n%s" %
                                     (rc, self.log_tail()))
                if b"serving" in self.out_path.read_bytes():
                    break
                if time.monotonic() > deadline:
                    hint = ""
                    if self._health_serving():
                        hint = " (Health says SERVING: is the 'serving' line not flushed from stdout?)"
                    raise ServeError("tessera serve printed no 'serving' line within %d s%s\n%s" %
                                     (self.startup_timeout, hint, self.log_tail()))
                time.sleep(0.1)
            self.last_info = wait_for(self.read_json, 10, what="%s/serve.json" % self.dir)
            self.channel = grpc.insecure_channel(self.address)
            grpc.channel_ready_future(self.channel).result(timeout=10)
            a = api()
            self.stub = a.rpc.InferenceStub(self.channel)
            self.health = a.health_rpc.HealthStub(self.channel)
        except BaseException:
            self.stop()
            raise
        return self

    def _health_serving(self):
        try:
            with grpc.insecure_channel(self.address) as ch:
                a = api()
                r = a.health_rpc.HealthStub(ch).Check(a.health_pb.HealthCheckRequest(service=""), timeout=2)
                return r.status == a.health_pb.HealthCheckResponse.SERVING
        except Exception:  # noqa: BLE001
            return False

    def wait_ready_groups(self, n=None, timeout=60):
        """Waits until ClusterStatus shows n ready groups (default: the replica count)."""
        n = self.replicas if n is None else n

        def ready():
            st = self.status(timeout=5)
            return sum(1 for g in st.groups if g.ready) >= n and st

        return wait_for(ready, timeout, interval=0.2, what="%d ready groups in ClusterStatus" % n)

    def send_signal(self, sig):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, grace=10):
        """Stops serve: sig, then SIGKILL after grace seconds. Returns serve's exit status."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is None:
            LIVE.discard(self)
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.stop_rc = self.proc.returncode
        self.leftovers = self._kill_leftovers()
        LIVE.discard(self)
        return self.stop_rc

    def _kill_leftovers(self):
        """Kills what serve left running (processes it started, by pid) and says which they were."""
        left = []
        info = self.last_info
        try:
            info = self.read_json() or info
        except Exception:  # noqa: BLE001
            pass
        pids = []
        if info:
            pids.append(("coordinator", info.get("coordinator_pid")))
            pids += [(w.get("id"), w.get("pid")) for w in info.get("workers", [])]
        deadline = time.monotonic() + 3
        for name, pid in pids:
            if not isinstance(pid, int) or pid <= 0:
                continue
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(pid):
                left.append("%s (pid %d)" % (name, pid))
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        try:  # the process group we created for serve (etcd and workers unless they left it)
            os.killpg(self.proc.pid, 0)
            left.append("processes in serve's process group %d" % self.proc.pid)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        return left

    def cleanup(self):
        if not os.environ.get("TESSERA_KEEP_LOGS"):
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        self.cleanup()

    # -- what it says about itself --

    def read_json(self):
        p = self.dir / "serve.json"
        if not p.exists():
            return None
        try:
            info = json.loads(p.read_text())
        except (ValueError, OSError):
            return None  # caught mid-rewrite
        self.last_info = info
        return info

    def worker_pid(self, wid):
        info = self.read_json() or self.last_info
        for w in info.get("workers", []):
            if w.get("id") == wid:
                return w.get("pid")
        return None

    def log_files(self):
        files = [self.out_path, self.err_path] if self.proc else []
        if self.dir.exists():
            files += sorted(p for p in self.dir.rglob("*") if p.is_file())
        return files

    def log_tail(self, n=40):
        parts = ["---- tessera serve %s (%s) ----" % (self.name, " ".join(self.argv()))]
        for p in self.log_files():
            parts.append("---- %s (last %d lines) ----\n%s" % (p, n, tail(p, n)))
        return "\n".join(parts)

    # -- RPC helpers --

    def status(self, timeout=10):
        return self.stub.ClusterStatus(api().pb.ClusterStatusRequest(), timeout=timeout)

    def group_stats(self, timeout=10):
        """{group name: WorkerStats} for the groups whose leader answered."""
        return {g.group: g.stats for g in self.status(timeout).groups if g.HasField("stats")}

    def wait_idle(self, timeout=10):
        """Waits until every group has all its KV blocks free and nothing running or waiting."""

        def idle():
            st = self.status(timeout=5)
            if not st.groups:
                return False
            for g in st.groups:
                s = g.stats
                if not g.HasField("stats") or s.n_blocks <= 0 or s.n_free_blocks != s.n_blocks \
                        or s.n_running != 0 or s.n_waiting != 0:
                    return False
            return st

        try:
            return wait_for(idle, timeout, interval=0.2, what="all groups idle")
        except AssertionError as e:
            raise AssertionError("%s; last ClusterStatus:\n%s" % (e, self.status(timeout=5))) from None


@contextlib.contextmanager
def running(tessera, model, replicas=1, **kw):
    """A started Serve with all its replicas ready; stopped and cleaned up on the way out."""
    s = Serve(tessera, model, replicas=replicas, **kw)
    s.start()
    try:
        s.wait_ready_groups(replicas, timeout=60)
        yield s
    finally:
        s.stop()
        s.cleanup()


# ---------------------------------------------------------------------------------------------
# tessera generate: the offline oracle


@dataclasses.dataclass
class Ref:
    text: str
    ids: list
    finish: str  # "stop" or "length", as generate's stderr says


class Offline:
    """`tessera generate --show-ids` per (prompt, options), cached. Thread-safe."""

    def __init__(self, tessera, model, threads=1):
        self.tessera, self.model, self.threads = str(tessera), str(model), threads
        self.cache = {}
        self.lock = threading.Lock()

    def __call__(self, prompt=None, max_tokens=16, ignore_eos=False, chat=False, system=None, prompt_ids=None):
        key = (prompt, max_tokens, ignore_eos, chat, system, tuple(prompt_ids) if prompt_ids else None)
        with self.lock:
            if key in self.cache:
                return self.cache[key]
        argv = [self.tessera, "generate", "--model", self.model, "--max-tokens", str(max_tokens), "--show-ids",
                "--threads", str(self.threads)]
        if prompt_ids is not None:
            argv += ["--prompt-ids", ",".join(map(str, prompt_ids))]
        else:
            argv += ["--prompt", prompt]
        if ignore_eos:
            argv.append("--ignore-eos")
        if chat:
            argv.append("--chat")
        if system is not None:
            argv += ["--system", system]
        r = subprocess.run(argv, capture_output=True, timeout=300, cwd=str(REPO))
        if r.returncode != 0:
            raise RuntimeError("%s exited %d: %s" % (" ".join(argv), r.returncode, r.stderr.decode(errors="replace")))
        out = r.stdout.decode("utf-8")
        # stdout is: text "\n" ids "\n"
        assert out.endswith("\n"), repr(out)
        text, _, ids_line = out[:-1].rpartition("\n")
        ids = [int(x) for x in ids_line.split(",")] if ids_line else []
        m = re.search(r"finish (\w+)", r.stderr.decode(errors="replace"))
        ref = Ref(text=text, ids=ids, finish=m.group(1) if m else "?")
        with self.lock:
            self.cache[key] = ref
        return ref

    def many(self, calls, parallel=2):
        """Precomputes [(kwargs), ...] with a few processes at once; returns the Refs in order."""
        out = [None] * len(calls)
        errors = []
        idx = iter(range(len(calls)))
        lock = threading.Lock()

        def work():
            while True:
                with lock:
                    i = next(idx, None)
                if i is None:
                    return
                try:
                    out[i] = self(**calls[i])
                except Exception as e:  # noqa: BLE001
                    errors.append(e)

        ts = [threading.Thread(target=work, daemon=True) for _ in range(parallel)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(600)
        if errors:
            raise errors[0]
        return out


# ---------------------------------------------------------------------------------------------
# Calling Generate


FINISH_NAMES = {0: "unspecified", 1: "stop", 2: "length", 3: "cancelled", 4: "error"}


class Stream:
    """One Generate call, read to its end on the calling thread, with timestamps.

    cancel_after: cancel the call once that many token ids have arrived.
    on_msg(stream, msg): called for each message (e.g. to set an event).
    """

    def __init__(self, stub, req, timeout=60, cancel_after=None, on_msg=None, method=None):
        self.stub, self.req, self.timeout = stub, req, timeout
        self.cancel_after, self.on_msg, self.method = cancel_after, on_msg, method
        self.msgs, self.ids, self.logprobs, self.chunks, self.times = [], [], [], [], []
        self.code = None  # grpc.StatusCode when the call failed
        self.details = ""
        self.t_start = self.t_first = self.t_end = self.t_cancel = None
        self.error = None  # anything else that went wrong while reading

    @property
    def text(self):
        return "".join(self.chunks)

    @property
    def last(self):
        return self.msgs[-1] if self.msgs else None

    @property
    def finish(self):
        if not self.msgs or not self.msgs[-1].HasField("finish_reason"):
            return None
        return FINISH_NAMES.get(self.msgs[-1].finish_reason, str(self.msgs[-1].finish_reason))

    def run(self):
        self.t_start = time.monotonic()
        call = (self.method or self.stub.Generate)(self.req, timeout=self.timeout)
        self.call = call
        try:
            for msg in call:
                now = time.monotonic()
                if isinstance(msg, bytes):  # a call made without deserializers
                    msg = api().pb.GenerateResponse.FromString(msg)
                self.msgs.append(msg)
                self.times.append(now)
                if msg.token_ids and self.t_first is None:
                    self.t_first = now
                self.ids.extend(msg.token_ids)
                self.logprobs.extend(msg.logprobs)
                self.chunks.append(msg.text)
                if self.on_msg:
                    self.on_msg(self, msg)
                if self.cancel_after is not None and self.t_cancel is None and len(self.ids) >= self.cancel_after:
                    self.t_cancel = time.monotonic()
                    call.cancel()
        except grpc.RpcError as e:
            self.code, self.details = e.code(), e.details() or ""
        except Exception as e:  # noqa: BLE001 - e.g. a response that does not parse
            self.error = e
        self.t_end = time.monotonic()
        return self

    def describe(self):
        s = "ids=%s text=%r finish=%s" % (self.ids, self.text, self.finish)
        if self.code is not None:
            s += " code=%s details=%r" % (self.code, self.details)
        if self.error is not None:
            s += " error=%r" % (self.error,)
        return s


def start_streams(stub, reqs, timeout=120, first_within=60):
    """Starts one Stream per request, each on a daemon thread, and returns (streams, threads) once
    every stream has its first token (AssertionError naming the first that has none within
    first_within seconds)."""
    got = [threading.Event() for _ in reqs]
    streams = [Stream(stub, r, timeout=timeout, on_msg=(lambda e: lambda st, m: st.ids and e.set())(e))
               for r, e in zip(reqs, got)]
    threads = [threading.Thread(target=st.run, daemon=True) for st in streams]
    for t in threads:
        t.start()
    for i, e in enumerate(got):
        assert e.wait(first_within), "stream %d got no token: %s" % (i, streams[i].describe())
    return streams, threads


def run_parallel(fns, timeout, start_together=True):
    """Runs each fn() on its own daemon thread; returns their results in order.

    Raises AssertionError if any is still running after timeout seconds (the gRPC deadlines
    should have ended them), or re-raises the first exception one raised.
    """
    n = len(fns)
    results, errors = [None] * n, [None] * n
    barrier = threading.Barrier(n) if start_together and n > 1 else None

    def body(i):
        try:
            if barrier:
                barrier.wait(30)
            results[i] = fns[i]()
        except BaseException as e:  # noqa: BLE001
            errors[i] = e

    ts = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    deadline = time.monotonic() + timeout
    for t in ts:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = [i for i, t in enumerate(ts) if t.is_alive()]
    if hung:
        raise AssertionError("%d of %d calls still running after %.0f s: %s" % (len(hung), n, timeout, hung[:10]))
    for e in errors:
        if e is not None:
            raise e
    return results


def gen_request(prompt=None, max_tokens=None, ignore_eos=None, request_id=None, token_ids=None, messages=None,
                **sampling):
    pb = api().pb
    r = pb.GenerateRequest()
    if prompt is not None:
        r.prompt = prompt
    if token_ids is not None:
        r.token_ids.ids.extend(token_ids)
        r.token_ids.SetInParent()
    if messages is not None:
        for role, content in messages:
            r.messages.messages.add(role=role, content=content)
        r.messages.SetInParent()
    if max_tokens is not None:
        r.max_tokens = max_tokens
    if ignore_eos is not None:
        r.ignore_eos = ignore_eos
    if request_id is not None:
        r.request_id = request_id
    for k, v in sampling.items():
        setattr(r.sampling, k, v)
    return r


def check_against(stream, ref, max_tokens, prompt_tokens=None, request_id=None):
    """Problems (a list of strings) between a finished stream and the offline reference."""
    p = []
    if stream.code is not None or stream.error is not None:
        return ["failed: %s" % stream.describe()]
    if not stream.msgs:
        return ["no messages"]
    if stream.finish not in ("stop", "length"):
        p.append("finish %s, want stop or length" % stream.finish)
    for m in stream.msgs[:-1]:
        if m.HasField("finish_reason") and m.finish_reason != 0:
            p.append("finish_reason on a message before the last")
            break
        if m.HasField("usage"):
            p.append("usage on a message before the last")
            break
    if stream.ids != ref.ids:
        p.append("ids %s != offline %s" % (stream.ids, ref.ids))
    if stream.finish != ref.finish:
        p.append("finish %s != offline %s" % (stream.finish, ref.finish))
    if stream.text != ref.text:
        p.append("text %r != offline %r" % (stream.text, ref.text))
    if stream.finish == "length" and len(stream.ids) != max_tokens:
        p.append("finish length with %d ids, max_tokens %d" % (len(stream.ids), max_tokens))
    if len(stream.ids) > max_tokens:
        p.append("%d ids > max_tokens %d" % (len(stream.ids), max_tokens))
    last = stream.last
    if not last.HasField("usage"):
        p.append("no usage on the last message")
    else:
        if last.usage.completion_tokens != len(stream.ids):
            p.append("usage.completion_tokens %d != %d ids" % (last.usage.completion_tokens, len(stream.ids)))
        if prompt_tokens is not None and last.usage.prompt_tokens != prompt_tokens:
            p.append("usage.prompt_tokens %d != %d (Tokenize)" % (last.usage.prompt_tokens, prompt_tokens))
    if request_id is not None:
        bad = [m.request_id for m in stream.msgs if m.request_id != request_id]
        if bad:
            p.append("request_id %r not echoed (got %r)" % (request_id, bad[0]))
    return p


# Prompts of mixed lengths (about 1 to 200 tokens).
_STORY = ("The lighthouse keeper had lived on the island for thirty years. Every evening he climbed the "
          "spiral staircase, trimmed the wick, polished the great lens and watched the ships pass far out "
          "at sea. One winter night a storm broke the glass of the lantern room, and the wind blew out "
          "the flame. He worked until dawn to light it again, because he knew that somewhere in the dark "
          "a small fishing boat was trying to find its way home. ")
PROMPTS = [
    "Hi",
    "Once upon a time",
    "The capital of France is",
    "def fibonacci(n):",
    "List three colors:",
    "Water boils at a temperature of",
    "The quick brown fox jumps over the lazy dog. Then the dog",
    "Translate to French: I like apples.",
    "In 1969, the first humans walked on the Moon. The mission was called",
    "A mosaic is",
    "Question: What is the largest planet in the solar system?\nAnswer:",
    "Here is a short recipe for pancakes. Ingredients:",
    _STORY,
    _STORY + "When the sun rose, he saw",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
    "Summarize the following text in one sentence.\n\n" + _STORY * 2,
]
