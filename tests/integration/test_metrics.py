"""Prometheus /metrics (docs/operations.md, Metrics), scraped before and after a known load.

Leader: a bare `tessera worker --metrics-port` (no etcd, its Worker service driven directly).
Its request and token counters move by exactly what was sent and generated, the queue-time
histogram counts one per request, the running/waiting gauges and KV usage follow the load, and
every scrape passes a strict parser of the text format 0.0.4.

Coordinator: the same bar on http://host:--http-port/metrics (request_success, requests by status
code, prompt and generation tokens, TTFT, inter-token latency and e2e histograms), through
`tessera serve --metrics-port --served-model-name`, whose worker's /metrics (listed in serve.json)
moves by the same tokens, both under the served name as model_name."""

import math
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import grpc
import pytest

import harness
from harness import Stream, free_port, gen_request, port_open, run_parallel, wait_for

# ---------------------------------------------------------------------------------------------
# A strict parser of the text exposition format 0.0.4


_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(r"^(%s)(\{.*\})? (\S+)$" % _NAME)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|\})')
_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


def _value(s):
    if s in ("+Inf", "-Inf", "NaN"):
        return float(s.replace("Inf", "inf").replace("NaN", "nan"))
    if not re.match(r"^-?[0-9]+(\.[0-9]+)?(e[+-]?[0-9]+)?$", s):
        raise AssertionError("bad sample value %r" % s)
    return float(s)


def _labels(s, line):
    """'{a="x",b="y"}' -> (("a", "x"), ("b", "y")), unescaped; raises on anything else."""
    out, i = [], 1
    if s == "{}":
        return ()
    while i < len(s):
        m = _LABEL.match(s, i)
        assert m, "bad labels at %r in %r" % (s[i:], line)
        v = re.sub(r"\\(.)", lambda e: {"n": "\n"}.get(e.group(1), e.group(1)), m.group(2))
        out.append((m.group(1), v))
        i = m.end()
        if m.group(3) == "}":
            assert i == len(s), "text after the labels in %r" % line
    names = [k for k, _ in out]
    assert len(set(names)) == len(names), "a label twice in %r" % line
    return tuple(out)


class Exposition:
    """families: name -> {"help", "type"}; samples: (name, labels) -> value."""

    def __init__(self, text):
        self.text = text
        self.families, self.samples = {}, {}
        assert text.endswith("\n"), "the exposition does not end with a newline"
        for line in text.split("\n")[:-1]:
            assert line, "an empty line"
            if line.startswith("#"):
                m = re.match(r"^# (HELP|TYPE) (%s) ?(.*)$" % _NAME, line)
                assert m, "bad comment line %r" % line
                f = self.families.setdefault(m.group(2), {})
                key = m.group(1).lower()
                assert key not in f, "%s twice for %s" % (m.group(1), m.group(2))
                assert not any(n == m.group(2) or self.family_of(n) == m.group(2) for n, _ in self.samples), \
                    "%s of %s after its samples" % (m.group(1), m.group(2))
                if key == "type":
                    assert m.group(3) in _TYPES, line
                f[key] = m.group(3)
                continue
            m = _SAMPLE.match(line)
            assert m, "a sample line that does not parse: %r" % line
            name, labels = m.group(1), _labels(m.group(2) or "{}", line)
            key = (name, labels)
            assert key not in self.samples, "sample twice: %r" % line
            fam = self.family_of(name)
            assert fam in self.families and "type" in self.families[fam] and "help" in self.families[fam], \
                "sample %r before its family's HELP and TYPE" % line
            self.samples[key] = _value(m.group(3))
        for name, f in self.families.items():
            assert "help" in f and "type" in f, "family %s lacks HELP or TYPE" % name
            if f["type"] == "counter":
                assert name.endswith("_total"), "counter %s does not end in _total" % name
        self._check_histograms()

    def family_of(self, sample_name):
        for suffix in ("_bucket", "_sum", "_count"):
            base = sample_name[:-len(suffix)]
            if sample_name.endswith(suffix) and self.families.get(base, {}).get("type") == "histogram":
                return base
        return sample_name

    def _check_histograms(self):
        for name, f in self.families.items():
            if f["type"] != "histogram":
                continue
            series = {}
            for (n, labels), v in self.samples.items():
                if n == name + "_bucket":
                    le = dict(labels).get("le")
                    assert le is not None, "bucket without le: %s %s" % (n, labels)
                    rest = tuple(kv for kv in labels if kv[0] != "le")
                    series.setdefault(rest, []).append((_value(le), v))
            for rest, buckets in series.items():
                assert buckets[-1][0] == math.inf, "%s%s: the last bucket is not +Inf" % (name, rest)
                assert [b for b, _ in buckets] == sorted(b for b, _ in buckets), "%s: le out of order" % name
                counts = [c for _, c in buckets]
                assert counts == sorted(counts), "%s%s: buckets not cumulative: %s" % (name, rest, counts)
                count = self.samples.get((name + "_count", rest))
                assert count == counts[-1], "%s%s: +Inf %s != _count %s" % (name, rest, counts[-1], count)
                assert (name + "_sum", rest) in self.samples, "%s%s: no _sum" % (name, rest)

    def get(self, name, **labels):
        """The one sample of name whose labels include these; 0 when none (not yet observed)."""
        hits = [v for (n, ls), v in self.samples.items()
                if n == name and all(dict(ls).get(k) == v for k, v in labels.items())]
        assert len(hits) <= 1, "%d samples of %s %s" % (len(hits), name, labels)
        return hits[0] if hits else 0.0


def scrape(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8", r.headers
        return Exposition(r.read().decode("utf-8"))


def test_parser_refuses():
    """The parser above is strict: each of these breaks one rule it checks."""
    good = ('# HELP a_total x\n# TYPE a_total counter\na_total{k="v\\"q"} 1.0\n'
            '# HELP h h\n# TYPE h histogram\nh_bucket{le="1.0"} 1.0\nh_bucket{le="+Inf"} 2.0\n'
            'h_sum 3.0\nh_count 2.0\n')
    e = Exposition(good)
    assert e.get("a_total", k='v"q') == 1.0 and e.get("h_count") == 2.0
    bad = [
        good.replace("# HELP a_total x\n", ""),
        good.replace('h_bucket{le="+Inf"} 2.0\n', ""),
        good.replace('h_bucket{le="1.0"} 1.0', 'h_bucket{le="1.0"} 3.0'),
        good.replace("h_count 2.0", "h_count 5.0"),
        good.replace("a_total{", "a_total {"),
        good.replace("1.0\n#", "one\n#", 1),
        good.replace('k="v\\"q"', 'k="v"q"'),
        good.replace("counter", "countr"),
        good + "a_total{k=\"v\\\"q\"} 2.0\n",
        good.replace("a_total", "a"),
    ]
    for b in bad:
        with pytest.raises(AssertionError):
            Exposition(b)


# ---------------------------------------------------------------------------------------------
# The leader


class Worker:
    """`tessera worker` without etcd: its Worker service on port, /metrics on metrics_port."""

    def __init__(self, tessera, model, base, max_seqs):
        self.port, self.metrics_port = free_port(), free_port()
        self.log = base / "worker.log"
        argv = [str(tessera), "worker", "--model", str(model), "--threads", "1", "--kv-blocks", "256",
                "--max-seqs", str(max_seqs), "--port", str(self.port), "--metrics-port", str(self.metrics_port)]
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = "http://127.0.0.1:%d/metrics" % self.metrics_port
        wait_for(lambda: self.proc.poll() is not None or (port_open("127.0.0.1", self.port) and
                                                          port_open("127.0.0.1", self.metrics_port)),
                 60, what="the worker's ports")
        assert self.proc.poll() is None, "the worker exited:\n%s" % harness.tail(self.log)
        self.channel = grpc.insecure_channel("127.0.0.1:%d" % self.port)

    def stop(self):
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def worker_request(api, prompt_ids, max_tokens):
    r = api.worker_pb.WorkerGenerateRequest(request_id="m", prompt_ids=prompt_ids, max_tokens=max_tokens,
                                            ignore_eos=True, sampling=api.pb.SamplingParams(temperature=0.0))
    return r


def worker_stream(stub, req, got, i, on_token=None):
    """Reads one Worker.Generate to its end; got[i] = (token count, finish reason)."""
    n, finish = 0, None
    for m in stub.Generate(req, timeout=600):  # generous: sanitizer builds on a busy CI host
        n += len(m.token_ids)
        if on_token:
            on_token(n)
        if m.HasField("finish_reason"):
            finish = m.finish_reason
    got[i] = (n, finish)
    return got[i]


def test_leader_metrics(tessera_bin, model, api, tmp_path):
    w = Worker(tessera_bin, model, tmp_path, max_seqs=1)
    try:
        stub = api.worker_rpc.WorkerStub(w.channel)
        m0 = scrape(w.url)
        for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                     "vllm:gpu_cache_usage_perc", "vllm:num_preemptions_total", "vllm:prompt_tokens_total",
                     "vllm:generation_tokens_total", "vllm:request_queue_time_seconds",
                     "tessera:engine_steps_total"):
            assert name in m0.families, "no %s in\n%s" % (name, m0.text)
        assert all(dict(ls).get("model_name") == "SmolLM2-135M-Instruct.Q4_1"
                   for (_, ls) in m0.samples), "model_name label missing or wrong:\n%s" % m0.text

        # Known load: prompts of known lengths, ignore_eos, so each generates exactly max_tokens.
        prompts = [[1, 2, 3], list(range(100, 140)), [7] * 11, list(range(500, 517)), [42]]
        max_tokens = [5, 9, 1, 16, 3]
        got = [None] * len(prompts)
        run_parallel([lambda i=i: worker_stream(stub, worker_request(api, prompts[i], max_tokens[i]), got, i)
                      for i in range(len(prompts))], timeout=600)
        assert [g[0] for g in got] == max_tokens, got
        m1 = scrape(w.url)
        d = lambda name: m1.get(name) - m0.get(name)  # noqa: E731
        assert d("vllm:prompt_tokens_total") == sum(map(len, prompts)), m1.text
        assert d("vllm:generation_tokens_total") == sum(max_tokens), m1.text
        assert d("vllm:request_queue_time_seconds_count") == len(prompts), m1.text
        assert d("vllm:request_queue_time_seconds_sum") >= 0
        assert d("tessera:engine_steps_total") >= max(max_tokens), m1.text
        # with --max-seqs 1 the five ran one after another: whoever went last waited for the others
        assert d("vllm:request_queue_time_seconds_sum") > 0, m1.text
        assert m1.get("vllm:num_requests_running") == 0 and m1.get("vllm:num_requests_waiting") == 0, m1.text
        assert m1.get("vllm:kv_cache_usage_perc") == 0, m1.text

        # The gauges under load: one long sequence running, one more waiting behind it
        # (--max-seqs 1), its KV blocks in use.
        started = threading.Event()
        long_got = [None, None]
        long_n = 150  # long enough to be caught running; short enough for a sanitizer build
        t1 = threading.Thread(target=worker_stream, daemon=True,
                              args=(stub, worker_request(api, list(range(1, 60)), long_n), long_got, 0,
                                    lambda n: n >= 3 and started.set()))
        t1.start()
        assert started.wait(60), "the long request streamed nothing"
        t2 = threading.Thread(target=worker_stream, daemon=True,
                              args=(stub, worker_request(api, [5, 6], 2), long_got, 1))
        t2.start()

        def loaded():
            m = scrape(w.url)
            return m if m.get("vllm:num_requests_waiting") == 1 else None
        m2 = wait_for(loaded, 30, interval=0.05, what="a waiting request")
        assert m2.get("vllm:num_requests_running") == 1, m2.text
        kv = m2.get("vllm:kv_cache_usage_perc")
        assert 0 < kv <= 1 and m2.get("vllm:gpu_cache_usage_perc") == kv, m2.text
        t1.join(600)
        t2.join(120)
        assert long_got == [(long_n, 2), (2, 2)], long_got  # FINISH_REASON_LENGTH = 2
        m3 = scrape(w.url)
        assert m3.get("vllm:generation_tokens_total") - m1.get("vllm:generation_tokens_total") == long_n + 2
        assert m3.get("vllm:request_queue_time_seconds_count") - m1.get("vllm:request_queue_time_seconds_count") == 2

        # Only GET /metrics is served.
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(w.url.replace("/metrics", "/nope"), timeout=10)
        assert e.value.code == 404
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(urllib.request.Request(w.url, data=b"x", method="POST"), timeout=10)
        assert e.value.code == 405
    finally:
        w.stop()
    assert w.proc.returncode == 0, harness.tail(w.log)


# ---------------------------------------------------------------------------------------------
# The coordinator


def test_coordinator_metrics(tessera_bin, model, api):
    http_port, metrics_port, name = free_port(), free_port(), "smol-test"
    with harness.Serve(tessera_bin, model, replicas=1, threads=1, name="metrics",
                       extra=["--http-port", str(http_port), "--metrics-port", str(metrics_port),
                              "--served-model-name", name]) as s:
        s.wait_ready_groups(1, timeout=60)
        url = "http://127.0.0.1:%d/metrics" % http_port
        wurl = "http://%s/metrics" % s.read_json()["workers"][0]["metrics_address"]
        assert wurl == "http://127.0.0.1:%d/metrics" % metrics_port, wurl
        w0 = wait_for(lambda: port_open("127.0.0.1", metrics_port) and scrape(wurl), 30,
                      what="the worker's /metrics")
        m0 = scrape(url)
        assert m0.get("tessera:groups_ready") == 1, m0.text

        prompts = [[1, 2, 3], list(range(100, 130)), [9] * 7]
        max_tokens = [4, 7, 2]
        streams = [Stream(s.stub, gen_request(token_ids=p, max_tokens=n, ignore_eos=True), timeout=120)
                   for p, n in zip(prompts, max_tokens)]
        run_parallel([x.run for x in streams], timeout=180)
        for x, n in zip(streams, max_tokens):
            assert x.code is None and len(x.ids) == n and x.finish == "length", x.describe()
        bad = Stream(s.stub, gen_request(token_ids=[1, 2], max_tokens=4, temperature=-1.0), timeout=30).run()
        assert bad.code == grpc.StatusCode.INVALID_ARGUMENT, bad.describe()

        m1 = scrape(url)
        d = lambda name, **kw: m1.get(name, **kw) - m0.get(name, **kw)  # noqa: E731
        n, gen = len(prompts), sum(max_tokens)
        assert d("tessera:requests_total", code="OK") == n, m1.text
        assert d("tessera:requests_total", code="INVALID_ARGUMENT") == 1, m1.text
        assert d("vllm:request_success_total", finished_reason="length") == n, m1.text
        assert d("vllm:request_success_total", finished_reason="stop") == 0, m1.text
        assert d("tessera:prompt_tokens_total") == sum(map(len, prompts)), m1.text
        assert d("tessera:generation_tokens_total") == gen, m1.text
        assert d("vllm:time_to_first_token_seconds_count") == n, m1.text
        assert d("vllm:e2e_request_latency_seconds_count") == n, m1.text
        assert d("vllm:inter_token_latency_seconds_count") == gen - n, m1.text
        assert d("vllm:time_per_output_token_seconds_count") == gen - n, m1.text
        assert d("vllm:request_prompt_tokens_count") == n and d("vllm:request_prompt_tokens_sum") == sum(
            map(len, prompts)), m1.text
        assert d("vllm:request_generation_tokens_sum") == gen, m1.text
        assert d("vllm:e2e_request_latency_seconds_sum") >= d("vllm:time_to_first_token_seconds_sum") > 0
        assert m1.get("tessera:requests_in_flight") == 0 and m1.get("tessera:groups_ready") == 1, m1.text
        assert all(dict(ls).get("model_name") == name for (_, ls) in m1.samples), m1.text
        w1 = scrape(wurl)
        assert w1.get("vllm:generation_tokens_total") - w0.get("vllm:generation_tokens_total") == gen, w1.text
        assert all(dict(ls).get("model_name") == name for (_, ls) in w1.samples), w1.text
