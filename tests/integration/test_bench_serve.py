"""scripts/bench_serve.py runs, so it cannot rot: one round at concurrency 1 and 2 over gRPC and
OpenAI HTTP, a handful of short requests, and the numbers it prints are sane (every request
answered with max_tokens tokens on both transports, rates and latencies positive and ordered).
"""

import json
import math
import subprocess
import sys

import harness

MAX_TOKENS = 6
REQUESTS = 3


def test_bench_serve_runs(tessera_bin, model, tmp_path):
    out_json = tmp_path / "bench.json"
    cmd = [sys.executable, str(harness.REPO / "scripts" / "bench_serve.py"), "--tessera", str(tessera_bin),
           "--model", str(model), "--threads", "1", "--concurrency", "1,2", "--rounds", "1",
           "--requests-per-level", str(REQUESTS), "--max-tokens", str(MAX_TOKENS), "--prompt-tokens", "16",
           "--timeout", "60", "--json", str(out_json)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=str(harness.REPO))
    assert r.returncode == 0, "bench_serve failed (%d):\n%s\n%s" % (r.returncode, r.stdout[-3000:], r.stderr[-3000:])

    # the table: a header and one row per (level, transport), HTTP rows with their ratio
    lines = r.stdout.splitlines()
    assert any(line.startswith("| concurrency | transport |") for line in lines), r.stdout
    table = [line.split("|")[1:-1] for line in lines if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert [(c.strip(), t.strip()) for c, t, *_ in table] == \
        [("1", "grpc"), ("1", "http"), ("2", "grpc"), ("2", "http")], r.stdout
    assert any(line.startswith("load average at start:") for line in lines), r.stdout

    rows = json.loads(out_json.read_text())["rows"]
    assert len(rows) == 4
    for row in rows:
        what = "%(transport)s at concurrency %(concurrency)d" % row
        assert row["errors"] == 0, (what, row["first_error"])
        assert row["requests"] == REQUESTS, what
        assert row["tokens"] == REQUESTS * MAX_TOKENS, what
        assert row["tps"] > 0 and math.isfinite(row["tps"]), what
        assert 0 < row["ttft_p50"] <= row["ttft_p99"], what
        assert 0 < row["itl_p50"] <= row["itl_p99"], what
        assert 0 < row["e2e_p50"] <= row["e2e_p99"], what
        assert row["ttft_p50"] < row["e2e_p99"], what
        # every token's text arrives in a message of its own here (the text is ASCII)
        assert 2 <= row["msgs_per_request"] <= MAX_TOKENS + 1, what
        assert row["client_cpu"] >= 0 and row["coord_ms_per_tok"] is not None and row["coord_ms_per_tok"] >= 0
    for c in (1, 2):
        http = next(row for row in rows if row["concurrency"] == c and row["transport"] == "http")
        assert http["http_over_grpc"] > 0 and math.isfinite(http["http_over_grpc"])
