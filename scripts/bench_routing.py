#!/usr/bin/env python3
"""Cache-aware routing against load-only routing: two replicas, a few distinct long prefixes
(system prompts), requests in random order, each a prefix and a tail of its own. For each
routing (`tessera serve --routing cache|load`, one serve each, the same requests) it prints the
prefix-cache hit rate (usage's cached tokens over prompt tokens), time to first token, and the
share of requests each replica served (from ClusterStatus: the requests its leader admitted).
The KV cache is kept small (--kv-blocks), so that one replica holds about half of the prefixes:
what a long-running service with many system prompts looks like.

    /usr/bin/python3 scripts/bench_routing.py

tests/integration/test_routing.py runs run_routing() and checks what docs/benchmarks.md records.
"""

import argparse
import random
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
import harness  # noqa: E402


def make_requests(n_prefixes, prefix_tokens, tail_tokens, n_requests, vocab, seed=7):
    """[(prefix index, token ids)]: n_requests in random order, each prefix as often."""
    rng = random.Random(seed)
    prefixes = [[rng.randrange(100, vocab) for _ in range(prefix_tokens)] for _ in range(n_prefixes)]
    reqs = [(i % n_prefixes, prefixes[i % n_prefixes] + [rng.randrange(100, vocab) for _ in range(tail_tokens)])
            for i in range(n_requests)]
    rng.shuffle(reqs)
    return reqs


def run_routing(tessera, model, routing, reqs, concurrency=4, max_tokens=4, kv_blocks=160, threads=1,
                timeout=300):
    """One serve with --routing `routing`, the requests through it; returns a summary dict."""
    pb = harness.api().pb
    extra = ["--routing", routing, "--kv-blocks", str(kv_blocks)]
    results = [None] * len(reqs)
    with harness.running(tessera, model, replicas=2, threads=threads, extra=extra, name="routing-" + routing) as s:
        before = s.group_stats()
        lock = threading.Lock()
        todo = list(range(len(reqs)))

        def worker():
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop(0)
                r = harness.gen_request(token_ids=reqs[i][1], max_tokens=max_tokens, ignore_eos=True)
                t0 = time.monotonic()
                ttft, last = None, None
                for m in s.stub.Generate(r, timeout=timeout):
                    if ttft is None and m.token_ids:
                        ttft = time.monotonic() - t0
                    last = m
                results[i] = (ttft, last.usage.prompt_tokens, last.usage.cached_tokens)

        ts = [threading.Thread(target=worker) for _ in range(concurrency)]
        t0 = time.monotonic()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        wall = time.monotonic() - t0
        after = s.group_stats()
    served = {g: after[g].admitted - (before[g].admitted if g in before else 0) for g in after}
    prompt = sum(r[1] for r in results)
    cached = sum(r[2] for r in results)
    ttfts = sorted(r[0] for r in results)
    return {"routing": routing, "requests": len(reqs), "hit_rate": cached / prompt, "cached": cached,
            "prompt": prompt, "ttft_mean": statistics.mean(ttfts), "ttft_p50": ttfts[len(ttfts) // 2],
            "ttft_p90": ttfts[int(len(ttfts) * 0.9)], "served": served,
            "max_share": max(served.values()) / len(reqs) if served else 1.0, "wall": wall}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tessera", default=harness.default_tessera())
    ap.add_argument("--model", default=str(harness.DEFAULT_MODEL))
    ap.add_argument("--prefixes", type=int, default=4)
    ap.add_argument("--prefix-tokens", type=int, default=800)
    ap.add_argument("--tail-tokens", type=int, default=16)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--kv-blocks", type=int, default=160, help="per replica [160: about 2 of 4 prefixes]")
    args = ap.parse_args()
    reqs = make_requests(args.prefixes, args.prefix_tokens, args.tail_tokens, args.requests, 49152)
    print("$ " + " ".join(sys.argv))
    print("%d requests, %d prefixes of %d tokens, tails of %d, concurrency %d, 2 replicas of %d KV blocks"
          % (args.requests, args.prefixes, args.prefix_tokens, args.tail_tokens, args.concurrency, args.kv_blocks))
    rows = [run_routing(args.tessera, args.model, r, reqs, args.concurrency, kv_blocks=args.kv_blocks)
            for r in ("cache", "load")]
    print("| routing | hit rate (cached / prompt tokens) | TTFT mean / p50 / p90 (ms) | requests per replica | wall (s) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print("| %s | %.3f (%d / %d) | %.0f / %.0f / %.0f | %s | %.1f |" % (
            r["routing"], r["hit_rate"], r["cached"], r["prompt"], 1e3 * r["ttft_mean"], 1e3 * r["ttft_p50"],
            1e3 * r["ttft_p90"], " / ".join(str(v) for _, v in sorted(r["served"].items())), r["wall"]))


if __name__ == "__main__":
    main()
