#!/usr/bin/python3
"""Load benchmark of `tessera serve`: closed-loop clients at several concurrencies.

At each concurrency C, C client threads send requests back to back (each sends its next request
when its previous one ends) until --requests-per-level requests have been sent. Every request has
the same prompt length (token ids, varied per request) and max_tokens with ignore_eos, so every
answer has the same length. It prints the command line and the machine, then one table row per
level, ready to paste into docs/benchmarks.md:

    /usr/bin/python3 scripts/bench_serve.py --replicas 2 --concurrency 1,4,16,64

Metrics: output tok/s = completion tokens / wall time of the level; TTFT = request start to its
first token; inter-token latency = time between consecutive tokens of a request (a message that
carries k tokens after a gap g counts as k gaps of g/k); e2e = request start to its last message.

Run with /usr/bin/python3 (Debian's python3-grpcio, grpc_tools). Either starts a serve
(--tessera, --model, --replicas, --threads, --serve-arg) or measures one that runs (--address).
"""

import argparse
import json
import os
import platform
import shlex
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
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines.append("machine: %s, nproc %d, CPU %s, memory %s" % (platform.node(), nproc, cpu, mem))
    lines.append("os: %s %s" % (platform.system(), platform.release()))
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
    return lines


class Result:
    __slots__ = ("t_start", "t_first", "t_end", "n_tokens", "gaps", "error")

    def __init__(self):
        self.t_start = self.t_first = self.t_end = None
        self.n_tokens = 0
        self.gaps = []
        self.error = None


def one_request(stub, pb, ids, max_tokens, timeout):
    r = Result()
    req = pb.GenerateRequest(token_ids=pb.TokenIds(ids=ids), max_tokens=max_tokens, ignore_eos=True)
    r.t_start = last = time.monotonic()
    try:
        for msg in stub.Generate(req, timeout=timeout):
            now = time.monotonic()
            k = len(msg.token_ids)
            if k:
                if r.t_first is None:
                    r.t_first = now  # its wait is TTFT, not an inter-token gap
                else:
                    r.gaps += [(now - last) / k] * k
                last = now
                r.n_tokens += k
    except grpc.RpcError as e:
        r.error = "%s: %s" % (e.code().name, e.details())
    r.t_end = time.monotonic()
    if r.error is None and r.n_tokens != max_tokens:
        r.error = "%d tokens, want %d" % (r.n_tokens, max_tokens)
    return r


def run_level(stub, pb, prompts, concurrency, n_requests, max_tokens, timeout):
    results = []
    lock = threading.Lock()
    counter = iter(range(n_requests))

    def client():
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            res = one_request(stub, pb, prompts[i % len(prompts)], max_tokens, timeout)
            with lock:
                results.append(res)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout * (n_requests // concurrency + 2))
    wall = time.monotonic() - t0
    if any(t.is_alive() for t in threads):
        raise SystemExit("bench_serve: clients still running at concurrency %d; giving up" % concurrency)
    return results, wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tessera", default=harness.default_tessera(), help="tessera binary [build/tessera]")
    ap.add_argument("--model", default=str(harness.DEFAULT_MODEL))
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads per worker [serve's default]")
    ap.add_argument("--serve-arg", action="append", default=[],
                    help="extra argument for tessera serve (repeat), e.g. --serve-arg=--kv-blocks=4096")
    ap.add_argument("--address", help="measure a serve already running at HOST:PORT instead")
    ap.add_argument("--concurrency", default="1,4,16,64", help="comma-separated levels [1,4,16,64]")
    ap.add_argument("--requests-per-level", type=int, default=0,
                    help="requests at each level [max(8, 4 x concurrency)]")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=600, help="per-request deadline, seconds")
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]

    print("$ " + " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv))
    for line in machine_info():
        print(line)
    sys.stdout.flush()

    api = harness.load_api()
    pb = api.pb
    serve = None
    try:
        if args.address:
            channel = grpc.insecure_channel(args.address)
            grpc.channel_ready_future(channel).result(timeout=30)
            stub = api.rpc.InferenceStub(channel)
        else:
            extra = list(args.serve_arg)
            serve = harness.Serve(args.tessera, args.model, replicas=args.replicas, threads=args.threads or None,
                                  extra=extra, name="bench")
            serve.start()
            serve.wait_ready_groups(args.replicas, timeout=600)
            print("serve: " + " ".join(shlex.quote(a) for a in serve.argv()))
            stub = serve.stub
        models = stub.ListModels(pb.ListModelsRequest(), timeout=30).models
        print("model: %s (context %d, %d ready replicas)" % (
            models[0].id, models[0].context_length, models[0].ready_replicas) if models else "model: ?")

        # Prompts of exactly --prompt-tokens ids, a different window of one text per request.
        text = " ".join([harness._STORY] * (args.prompt_tokens // 40 + 4))
        base = list(stub.Tokenize(pb.TokenizeRequest(prompt=text), timeout=60).token_ids)
        while len(base) < args.prompt_tokens + 64:
            base += base
        prompts = [base[i:i + args.prompt_tokens] for i in range(64)]
        print("requests: %d prompt tokens, %d output tokens (ignore_eos), greedy" % (
            args.prompt_tokens, args.max_tokens))

        # The peer, in the same run: the engine alone in one process (`tessera bench`, one
        # sequence, the threads one worker has), so each level reads as a multiple of what one
        # stream gets without the serving layer. Measured while the serve idles.
        base_tps = None
        if not args.address:
            cmd = [str(args.tessera), "bench", "--model", str(args.model), "--prompt-tokens",
                   str(args.prompt_tokens), "--gen-tokens", str(args.max_tokens), "--repeats", "3"]
            # serve's default: the cores shared out among the replicas' ranks
            threads = args.threads or max(1, (os.cpu_count() or 1) // args.replicas)
            cmd += ["--threads", str(threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            try:
                j = json.loads(out.stdout.strip().splitlines()[-1])
                base_tps = j["decode_tps"]
                print("peer: %s -> prompt %.1f tok/s, decode %.1f tok/s (one sequence, no serving)"
                      % (" ".join(shlex.quote(a) for a in cmd), j["prompt_tps"], base_tps))
            except (ValueError, KeyError, IndexError):
                print("peer: `tessera bench` failed: %s" % (out.stderr.strip()[-300:]), file=sys.stderr)

        warm, _ = run_level(stub, pb, prompts, 2, 2, min(args.max_tokens, 8), args.timeout)
        errs = [r.error for r in warm if r.error]
        if errs:
            raise SystemExit("bench_serve: warm-up failed: %s" % errs[0])

        print()
        print("| concurrency | requests | output tok/s | × one offline stream | req/s "
              "| TTFT p50 / p90 / p99 (ms) | ITL p50 / p90 / p99 (ms) | e2e p50 (ms) | errors |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        sys.stdout.flush()
        for c in levels:
            n = args.requests_per_level or max(8, 4 * c)
            results, wall = run_level(stub, pb, prompts, c, n, args.max_tokens, args.timeout)
            good = [r for r in results if r.error is None]
            errors = [r.error for r in results if r.error is not None]
            toks = sum(r.n_tokens for r in good)
            ttft = [(r.t_first - r.t_start) * 1e3 for r in good if r.t_first]
            itl = [g * 1e3 for r in good for g in r.gaps]
            e2e = [(r.t_end - r.t_start) * 1e3 for r in good]

            def p3(xs):
                return " / ".join("%.1f" % percentile(xs, q) for q in (50, 90, 99))

            ratio = "%.2f" % (toks / wall / base_tps) if base_tps else "-"
            print("| %d | %d | %.1f | %s | %.2f | %s | %s | %.0f | %d |" % (
                c, len(results), toks / wall, ratio, len(good) / wall, p3(ttft), p3(itl),
                percentile(e2e, 50), len(errors)))
            sys.stdout.flush()
            if errors:
                print("  errors at concurrency %d (first): %s" % (c, errors[0]), file=sys.stderr)

        st = stub.ClusterStatus(pb.ClusterStatusRequest(), timeout=30)
        print()
        for g in st.groups:
            s = g.stats
            print("group %s: steps %d, prompt tokens %d, decode tokens %d, max batch %d, preemptions %d, "
                  "KV blocks %d" % (g.group, s.steps, s.prompt_tokens, s.decode_tokens, s.max_batch,
                                    s.preemptions, s.n_blocks))
    finally:
        if serve:
            rc = serve.stop()
            if rc not in (0, None):
                print("bench_serve: serve exited %d; logs:\n%s" % (rc, serve.log_tail()), file=sys.stderr)
            serve.cleanup()


if __name__ == "__main__":
    main()
