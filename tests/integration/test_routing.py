"""Cache-aware routing (`--routing cache`, the default) against load-only routing on two
replicas: 4 distinct 800-token prefixes, 64 requests in random order, KV caches too small for
every prefix on one replica. Routing by what each replica likely holds finds more of the prompts
in the cache (usage's cached tokens) and still spreads the requests (neither replica over 65%).
scripts/bench_routing.py is the same run as a benchmark (docs/benchmarks.md); the time to first
token is printed here, not asserted.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench_routing  # noqa: E402


def test_cache_aware_routing_beats_load_only(tessera_bin, model):
    reqs = bench_routing.make_requests(4, 800, 16, 64, 49152)
    cache = bench_routing.run_routing(tessera_bin, model, "cache", reqs)
    load = bench_routing.run_routing(tessera_bin, model, "load", reqs)
    for r in (cache, load):
        print("%s: hit rate %.3f (%d of %d prompt tokens), TTFT mean %.0f ms, p50 %.0f ms, served %s"
              % (r["routing"], r["hit_rate"], r["cached"], r["prompt"], 1e3 * r["ttft_mean"],
                 1e3 * r["ttft_p50"], r["served"]))
        assert sum(r["served"].values()) == 64, r
    assert cache["hit_rate"] > load["hit_rate"] + 0.1, (cache, load)
    assert cache["max_share"] <= 0.65, cache
