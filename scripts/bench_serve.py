#!/usr/bin/python3
"""Load benchmark of `tessera serve` over gRPC and OpenAI HTTP: closed-loop clients at several concurrencies.

At each concurrency C, C client threads send streaming requests back to back (each sends its next
request when its previous one ends) until --requests-per-level requests have been sent. Every
request has the same prompt length (token ids, a different window of one text per request) and
max_tokens with ignore_eos, greedy, so every answer has the same length on both transports:
gRPC `Generate` with `token_ids`, and HTTP `POST /v1/completions` with the same ids as `prompt`,
`"stream": true`, `"ignore_eos": true` and `stream_options.include_usage` (the usage chunk is how
the script checks that HTTP produced max_tokens tokens). The transports are interleaved: each
round runs every level once per transport, alternating which goes first, and the table shows
the median of the rounds' output tok/s (so a drift in the machine's load hits both alike) and
latency percentiles over the samples of all rounds. On a machine too noisy for that, --mixed runs
both transports at once at each level (C clients of each), so both see the same batches and the
same load, and compares their rates within one run.

    /usr/bin/python3 scripts/bench_serve.py --concurrency 1,2,4,8,16,32,64 --rounds 3

Metrics: output tok/s = completion tokens / wall time of the level; TTFT = request start to the
first message relaying a token; ITL (inter-token latency) = the gap between consecutive stream
messages that carry text (on both transports: an HTTP event carries only text, so a token that
ends mid-character travels with the next); e2e = request start to the end of the stream.
"client CPU" is this process's user+system time over the level's wall time (in cores: on a small
machine the load generator competes with the server) and per output token; "coord ms/tok" the
coordinator's CPU time per output token (only where this script started the serve).

HTTP clients (--http-client): `openai` (the official package, one OpenAI client shared by the
threads) or `raw` (http.client, one keep-alive connection per thread, SSE lines parsed with
json.loads): the raw one costs the load generator far less CPU per token.

Run with /usr/bin/python3 (Debian's python3-grpcio and grpc_tools; openai from scripts/deps.sh).
Either starts a serve (--tessera, --model, --replicas, --threads, --serve-arg) with --http-port,
or measures one that runs (--grpc HOST:PORT and/or --http HOST:PORT).
"""

import argparse
import http.client
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
import harness  # noqa: E402  (stubs, serve control; the integration tests use it too)

import grpc  # noqa: E402


def percentile(xs, q):
    """Linear interpolation between closest ranks; q in [0, 100]."""
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def machine_info():
    lines = []
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = "%.1f GiB" % (kb / 2 ** 20)
    except (OSError, ValueError, IndexError):
        pass
    lines.append("machine: %s, nproc %d, CPU %s, memory %s" % (platform.node(), nproc(), cpu, mem))
    lines.append("os: %s %s; python %s" % (platform.system(), platform.release(), platform.python_version()))
    try:
        gpus = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        if gpus.returncode == 0 and gpus.stdout.strip():
            lines += ["gpu: " + g for g in gpus.stdout.strip().splitlines()]
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        rev = subprocess.run(["git", "-C", str(harness.REPO), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        if rev:
            lines.append("tessera: %s" % rev)
    except (OSError, subprocess.TimeoutExpired):
        pass
    lines.append("load average at start: %s" % loadavg())
    return lines


def nproc():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def loadavg():
    return " ".join("%.2f" % x for x in os.getloadavg())


def self_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def proc_cpu(pid):
    """User+system seconds of one process (all its threads), or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Result:
    __slots__ = ("t_start", "t_first", "t_end", "n_tokens", "n_msgs", "gaps", "error")

    def __init__(self):
        self.t_start = self.t_first = self.t_end = None
        self.n_tokens = self.n_msgs = 0
        self.gaps = []
        self.error = None


# ---- the transports: each makes a per-thread callable ids -> Result ----


class GrpcClient:
    name = "grpc"

    def __init__(self, stub, pb, max_tokens, timeout):
        self.stub, self.pb, self.max_tokens, self.timeout = stub, pb, max_tokens, timeout

    def worker(self):
        return self.one

    def one(self, ids, max_tokens=None):
        max_tokens = max_tokens or self.max_tokens
        pb = self.pb
        r = Result()
        req = pb.GenerateRequest(token_ids=pb.TokenIds(ids=ids), max_tokens=max_tokens, ignore_eos=True,
                                 sampling=pb.SamplingParams(temperature=0.0))
        r.t_start = last = time.monotonic()
        try:
            for msg in self.stub.Generate(req, timeout=self.timeout):
                now = time.monotonic()
                r.n_msgs += 1
                if msg.token_ids and r.t_first is None:
                    r.t_first = last = now  # its wait is TTFT, not an inter-token gap
                elif msg.text:
                    r.gaps.append(now - last)
                    last = now
                r.n_tokens += len(msg.token_ids)
        except grpc.RpcError as e:
            r.error = "%s: %s" % (e.code().name, e.details())
        r.t_end = time.monotonic()
        if r.error is None and r.n_tokens != max_tokens:
            r.error = "%d tokens, want %d" % (r.n_tokens, max_tokens)
        return r


def http_body(model, ids, max_tokens):
    return {"model": model, "prompt": list(ids), "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}


class RawHttpClient:
    """http.client, one keep-alive connection per thread; SSE read line by line."""
    name = "http"

    def __init__(self, address, model, max_tokens, timeout):
        self.host, port = address.rsplit(":", 1)
        self.port = int(port)
        self.model, self.max_tokens, self.timeout = model, max_tokens, timeout

    def worker(self):
        state = {"conn": None}

        def one(ids, max_tokens=None):
            max_tokens = max_tokens or self.max_tokens
            r = Result()
            body = json.dumps(http_body(self.model, ids, max_tokens))
            r.t_start = last = time.monotonic()
            usage = None
            try:
                if state["conn"] is None:
                    state["conn"] = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                c = state["conn"]
                c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
                resp = c.getresponse()
                if resp.status != 200:
                    r.error = "HTTP %d: %s" % (resp.status, resp.read()[:300])
                else:
                    while True:
                        line = resp.readline()
                        if not line:
                            break
                        if not line.startswith(b"data: "):
                            continue
                        data = line[6:].strip()
                        if data == b"[DONE]":
                            continue  # the body ends right after it
                        now = time.monotonic()
                        ev = json.loads(data)
                        if "error" in ev:
                            r.error = "stream error: %s" % ev["error"].get("message")
                            continue
                        if ev.get("usage"):
                            usage = ev["usage"]
                        if not ev.get("choices"):
                            continue
                        r.n_msgs += 1
                        if r.t_first is None:
                            r.t_first = last = now
                        elif ev["choices"][0].get("text"):
                            r.gaps.append(now - last)
                            last = now
                    resp.read()
            except (OSError, http.client.HTTPException, ValueError) as e:
                r.error = "%s: %s" % (type(e).__name__, e)
                if state["conn"] is not None:
                    state["conn"].close()
                state["conn"] = None
            r.t_end = time.monotonic()
            if usage:
                r.n_tokens = usage.get("completion_tokens", 0)
            if r.error is None and r.n_tokens != max_tokens:
                r.error = "%d tokens (usage %s), want %d" % (r.n_tokens, usage, max_tokens)
            return r

        return one


class OpenAIClient:
    """The official `openai` package: one OpenAI client (its connection pool) shared by the threads."""
    name = "http"

    def __init__(self, address, model, max_tokens, timeout):
        import openai  # PyPI's, pinned in scripts/deps.sh; its pool allows 1,000 connections
        self.openai = openai
        self.client = openai.OpenAI(base_url="http://%s/v1" % address, api_key="none", timeout=timeout,
                                    max_retries=0)
        self.model, self.max_tokens = model, max_tokens

    def worker(self):
        return self.one

    def one(self, ids, max_tokens=None):
        max_tokens = max_tokens or self.max_tokens
        r = Result()
        r.t_start = last = time.monotonic()
        usage = None
        try:
            stream = self.client.completions.create(
                model=self.model, prompt=list(ids), max_tokens=max_tokens, temperature=0, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
            for ch in stream:
                now = time.monotonic()
                if ch.usage:
                    usage = ch.usage
                if not ch.choices:
                    continue
                r.n_msgs += 1
                if r.t_first is None:
                    r.t_first = last = now
                elif ch.choices[0].text:
                    r.gaps.append(now - last)
                    last = now
        except self.openai.OpenAIError as e:
            r.error = "%s: %s" % (type(e).__name__, e)
        r.t_end = time.monotonic()
        if usage:
            r.n_tokens = usage.completion_tokens
        if r.error is None and r.n_tokens != max_tokens:
            r.error = "%d tokens (usage %s), want %d" % (r.n_tokens, usage, max_tokens)
        return r


# ---- one level ----


def run_level(client, prompts, concurrency, n_requests, timeout, max_tokens=None, coord_pid=None):
    results = []
    lock = threading.Lock()
    counter = iter(range(n_requests))

    def body():
        one = client.worker()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            res = one(prompts[i % len(prompts)], max_tokens)
            with lock:
                results.append(res)

    threads = [threading.Thread(target=body, daemon=True) for _ in range(concurrency)]
    cpu0, coord0 = self_cpu(), proc_cpu(coord_pid) if coord_pid else None
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout * (n_requests // concurrency + 2))
    wall = time.monotonic() - t0
    cpu = self_cpu() - cpu0
    coord1 = proc_cpu(coord_pid) if coord_pid else None
    if any(t.is_alive() for t in threads):
        raise SystemExit("bench_serve: %s clients still running at concurrency %d; giving up" %
                         (client.name, concurrency))
    good = [r for r in results if r.error is None]
    toks = sum(r.n_tokens for r in good)
    return {
        "results": results, "wall": wall, "tokens": toks, "tps": toks / wall,
        "client_cpu": cpu / wall,
        "client_ms_per_tok": cpu * 1e3 / toks if toks else None,
        "coord_ms_per_tok": ((coord1 - coord0) * 1e3 / toks) if coord0 is not None and coord1 is not None and toks
        else None,
    }


def run_mixed(clients, prompts, concurrency, n_requests, timeout):
    """Both transports at once: concurrency threads of each, n_requests each, so that both see
    the same batches and the same machine load. Returns {transport: run} (no CPU split)."""
    lock = threading.Lock()
    state = {t: {"results": [], "counter": iter(range(n_requests))} for t in clients}

    def body(t):
        one = clients[t].worker()
        st = state[t]
        while True:
            with lock:
                i = next(st["counter"], None)
            if i is None:
                return
            res = one(prompts[i % len(prompts)])
            with lock:
                st["results"].append(res)

    threads = [threading.Thread(target=body, args=(t,), daemon=True) for _ in range(concurrency) for t in clients]
    t0 = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout * (n_requests // concurrency + 2))
    if any(th.is_alive() for th in threads):
        raise SystemExit("bench_serve: clients still running at concurrency %d (mixed); giving up" % concurrency)
    out = {}
    for t, st in state.items():
        good = [r for r in st["results"] if r.error is None]
        toks = sum(r.n_tokens for r in good)
        wall = max((r.t_end for r in st["results"]), default=t0) - t0
        out[t] = {"results": st["results"], "wall": wall, "tokens": toks, "tps": toks / wall if wall > 0 else 0.0,
                  "client_cpu": None, "client_ms_per_tok": None, "coord_ms_per_tok": None}
    return out


def median_or_none(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(concurrency, transport, runs):
    """The rounds of one (level, transport): median tok/s, percentiles over all samples."""
    results = [r for run in runs for r in run["results"]]
    good = [r for r in results if r.error is None]
    errors = [r.error for r in results if r.error is not None]
    ms = lambda xs: [x * 1e3 for x in xs]  # noqa: E731
    ttft = ms([r.t_first - r.t_start for r in good if r.t_first])
    itl = ms([g for r in good for g in r.gaps])
    e2e = ms([r.t_end - r.t_start for r in good])
    coord = [run["coord_ms_per_tok"] for run in runs if run["coord_ms_per_tok"] is not None]
    return {
        "concurrency": concurrency, "transport": transport, "rounds": len(runs),
        "requests": len(results) // max(1, len(runs)), "errors": len(errors), "first_error": errors[0] if errors else None,
        "tokens": sum(run["tokens"] for run in runs),
        "tps": statistics.median(run["tps"] for run in runs),
        "tps_rounds": [round(run["tps"], 2) for run in runs],
        "msgs_per_request": statistics.mean(r.n_msgs for r in good) if good else 0,
        "ttft_p50": percentile(ttft, 50), "ttft_p99": percentile(ttft, 99),
        "itl_p50": percentile(itl, 50), "itl_p99": percentile(itl, 99),
        "e2e_p50": percentile(e2e, 50), "e2e_p99": percentile(e2e, 99),
        "client_cpu": median_or_none(run["client_cpu"] for run in runs),
        "client_ms_per_tok": median_or_none(run["client_ms_per_tok"] for run in runs),
        "coord_ms_per_tok": statistics.median(coord) if coord else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tessera", default=harness.default_tessera(), help="tessera binary [build/tessera]")
    ap.add_argument("--model", default=str(harness.DEFAULT_MODEL))
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads per worker [serve's default]")
    ap.add_argument("--serve-arg", action="append", default=[],
                    help="extra argument for tessera serve (repeat), e.g. --serve-arg=--kv-blocks=4096")
    ap.add_argument("--grpc", "--address", dest="grpc", help="measure a serve already running: its gRPC HOST:PORT")
    ap.add_argument("--http", help="... and its OpenAI HTTP HOST:PORT")
    ap.add_argument("--transports", default="grpc,http", help="grpc, http or both [grpc,http]")
    ap.add_argument("--http-client", choices=("raw", "openai"), default="raw",
                    help="raw http.client SSE or the openai package [raw]")
    ap.add_argument("--concurrency", default="1,2,4,8,16,32,64", help="comma-separated levels [1,2,4,8,16,32,64]")
    ap.add_argument("--requests-per-level", type=int, default=0,
                    help="requests at each level and round [max(8, 2 x concurrency)]")
    ap.add_argument("--rounds", type=int, default=3, help="repetitions of every (level, transport) [3]")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--shared-prefix", type=int, default=0,
                    help="put the same N tokens before every prompt (a system prompt), for the prefix "
                         "cache: compare a serve with --serve-arg=--no-prefix-caching [0]")
    ap.add_argument("--timeout", type=float, default=600, help="per-request deadline, seconds")
    ap.add_argument("--peer", action="store_true",
                    help="also time `tessera bench` (the engine alone, one sequence) while the serve idles")
    ap.add_argument("--mixed", action="store_true",
                    help="run both transports at once at each level (C clients of each): the same batches "
                         "and machine load for both, for a noisy machine; no per-transport CPU")
    ap.add_argument("--json", help="write the summary rows to this file too")
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    if not levels or any(c < 1 for c in levels) or not transports or set(transports) - {"grpc", "http"}:
        ap.error("--concurrency wants positive integers, --transports grpc and/or http")
    attach = bool(args.grpc or args.http)
    if attach and not args.grpc:
        ap.error("--http needs --grpc too (the prompts are tokenized over gRPC)")
    if attach and "http" in transports and not args.http:
        ap.error("measuring HTTP on a running serve needs --http HOST:PORT (or --transports grpc)")

    print("$ " + " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv))
    for line in machine_info():
        print(line)
    sys.stdout.flush()

    api = harness.load_api()
    pb = api.pb
    serve = None
    coord_pid = None
    try:
        if attach:
            channel = grpc.insecure_channel(args.grpc)
            grpc.channel_ready_future(channel).result(timeout=30)
            stub = api.rpc.InferenceStub(channel)
            http_address = args.http
        else:
            extra = list(args.serve_arg)
            if "http" in transports:
                extra += ["--http-port", str(harness.free_port())]
            serve = harness.Serve(args.tessera, args.model, replicas=args.replicas, threads=args.threads or None,
                                  extra=extra, name="bench")
            serve.start()
            serve.wait_ready_groups(args.replicas, timeout=600)
            print("serve: " + " ".join(shlex.quote(a) for a in serve.argv()))
            stub = serve.stub
            info = serve.read_json() or serve.last_info or {}
            http_address = info.get("http_address")
            coord_pid = info.get("coordinator_pid")
        models = stub.ListModels(pb.ListModelsRequest(), timeout=30).models
        if not models:
            raise SystemExit("bench_serve: the serve lists no model")
        model_id = models[0].id
        print("model: %s (context %d, %d ready replicas)" % (model_id, models[0].context_length,
                                                              models[0].ready_replicas))

        # Prompts of exactly --prompt-tokens ids, a different window of one text per request.
        text = " ".join([harness._STORY] * (args.prompt_tokens // 40 + 4))
        base = list(stub.Tokenize(pb.TokenizeRequest(prompt=text), timeout=60).token_ids)
        while len(base) < args.prompt_tokens + 64:
            base += base
        # Each window starts at another token, so no two share a prefix, unless --shared-prefix
        # (more than 64 requests a level reuse them, and the prefix cache finds the repeats).
        prompts = [base[i:i + args.prompt_tokens] for i in range(64)]
        if args.shared_prefix:
            words = ("%s %s" % (harness._STORY, text[::-1])).split()
            prefix = []
            while len(prefix) < args.shared_prefix:
                prefix += list(stub.Tokenize(pb.TokenizeRequest(prompt=" ".join(words)), timeout=60).token_ids)
                words = words[1:] + words[:1]
            prompts = [prefix[:args.shared_prefix] + p for p in prompts]
        print("requests: %d prompt tokens (ids; the first %d shared by all), %d output tokens (ignore_eos), "
              "greedy, streaming; HTTP client: %s" % (args.shared_prefix + args.prompt_tokens, args.shared_prefix,
                                                       args.max_tokens,
                                                       args.http_client if "http" in transports else "-"))

        if args.peer and not attach:
            cmd = [str(args.tessera), "bench", "--model", str(args.model), "--prompt-tokens",
                   str(args.prompt_tokens), "--gen-tokens", str(args.max_tokens), "--repeats", "3",
                   "--threads", str(args.threads or max(1, nproc() // args.replicas))]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            try:
                j = json.loads(out.stdout.strip().splitlines()[-1])
                print("peer: %s -> prompt %.1f tok/s, decode %.1f tok/s (one sequence, no serving)"
                      % (" ".join(shlex.quote(a) for a in cmd), j["prompt_tps"], j["decode_tps"]))
            except (ValueError, KeyError, IndexError):
                print("peer: `tessera bench` failed: %s" % (out.stderr.strip()[-300:]), file=sys.stderr)

        clients = {}
        if "grpc" in transports:
            clients["grpc"] = GrpcClient(stub, pb, args.max_tokens, args.timeout)
        if "http" in transports:
            if not http_address:
                raise SystemExit("bench_serve: the serve has no HTTP address")
            if args.http_client == "openai":
                clients["http"] = OpenAIClient(http_address, model_id, args.max_tokens, args.timeout)
            else:
                clients["http"] = RawHttpClient(http_address, model_id, args.max_tokens, args.timeout)

        for name, cl in clients.items():  # warm-up: connections, stubs, the engine's first steps
            warm = run_level(cl, prompts, 2, 2, args.timeout, max_tokens=min(args.max_tokens, 8))
            errs = [r.error for r in warm["results"] if r.error]
            if errs:
                raise SystemExit("bench_serve: %s warm-up failed: %s" % (name, errs[0]))

        if coord_pid:  # what the coordinator spends with nothing to do (etcd, polling), for scale
            c0, t0 = proc_cpu(coord_pid), time.monotonic()
            time.sleep(2)
            c1 = proc_cpu(coord_pid)
            if c0 is not None and c1 is not None:
                print("coordinator idle: %.1f ms of CPU per second" % ((c1 - c0) * 1e3 / (time.monotonic() - t0)))

        runs = {(c, t): [] for c in levels for t in clients}
        order = list(clients)
        for rnd in range(args.rounds):
            for c in levels:
                n = args.requests_per_level or max(8, 2 * c)
                if args.mixed:
                    for t, run in run_mixed(clients, prompts, c, n, args.timeout).items():
                        runs[(c, t)].append(run)
                        print("  round %d, concurrency %d (mixed), %s: %.1f output tok/s" % (rnd + 1, c, t, run["tps"]))
                    sys.stdout.flush()
                    continue
                for t in (order if (rnd + levels.index(c)) % 2 == 0 else order[::-1]):
                    run = run_level(clients[t], prompts, c, n, args.timeout, coord_pid=coord_pid)
                    runs[(c, t)].append(run)
                    print("  round %d, concurrency %d, %s: %.1f output tok/s, client CPU %.3f cores" % (
                        rnd + 1, c, t, run["tps"], run["client_cpu"]))
                    sys.stdout.flush()
                    errs = [r.error for r in run["results"] if r.error]
                    if errs:
                        print("  errors at concurrency %d over %s (%d, first): %s" % (c, t, len(errs), errs[0]),
                              file=sys.stderr)
            print("round %d of %d done; load average %s" % (rnd + 1, args.rounds, loadavg()))
            sys.stdout.flush()

        rows = [summarize(c, t, runs[(c, t)]) for c in levels for t in clients]
        by = {(r["concurrency"], r["transport"]): r for r in rows}
        print()
        print("Median of %d rounds (output tok/s); latencies in ms over all rounds' requests; client CPU: this "
              "process's, in cores of %d and in ms per output token; coord: the coordinator's CPU per output "
              "token." % (args.rounds, nproc()))
        print()
        print("| concurrency | transport | requests | output tok/s | HTTP/gRPC | TTFT p50 / p99 | ITL p50 / p99 "
              "| e2e p50 / p99 | msgs/req | client CPU | client ms/tok | coord ms/tok | errors |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            ratio = "-"
            if r["transport"] == "http" and (r["concurrency"], "grpc") in by:
                g = by[(r["concurrency"], "grpc")]["tps"]
                r["http_over_grpc"] = r["tps"] / g if g else float("nan")
                ratio = "%.3f" % r["http_over_grpc"]
            coord = "%.3f" % r["coord_ms_per_tok"] if r["coord_ms_per_tok"] is not None else "-"
            cms = "%.3f" % r["client_ms_per_tok"] if r["client_ms_per_tok"] is not None else "-"
            ccpu = "%.3f" % r["client_cpu"] if r["client_cpu"] is not None else "-"
            print("| %d | %s | %d | %.1f | %s | %.1f / %.1f | %.1f / %.1f | %.0f / %.0f | %.1f | %s | %s | %s | %d |" % (
                r["concurrency"], r["transport"], r["requests"], r["tps"], ratio, r["ttft_p50"], r["ttft_p99"],
                r["itl_p50"], r["itl_p99"], r["e2e_p50"], r["e2e_p99"], r["msgs_per_request"], ccpu,
                cms, coord, r["errors"]))
        print()
        print("per-round output tok/s: " + "; ".join(
            "%d %s %s" % (r["concurrency"], r["transport"], r["tps_rounds"]) for r in rows))
        print("load average at end: %s" % loadavg())
        sys.stdout.flush()
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"argv": sys.argv, "rows": rows}, f, indent=1)

        st = stub.ClusterStatus(pb.ClusterStatusRequest(), timeout=30)
        for g in st.groups:
            s = g.stats
            print("group %s: steps %d, prompt tokens %d, decode tokens %d, max batch %d, preemptions %d, "
                  "KV blocks %d" % (g.group, s.steps, s.prompt_tokens, s.decode_tokens, s.max_batch,
                                    s.preemptions, s.n_blocks))
        if any(r["errors"] for r in rows):
            raise SystemExit("bench_serve: some requests failed (see above)")
    finally:
        if serve:
            rc = serve.stop()
            if rc not in (0, None):
                print("bench_serve: serve exited %d; logs:\n%s" % (rc, serve.log_tail()), file=sys.stderr)
            serve.cleanup()


if __name__ == "__main__":
    main()
