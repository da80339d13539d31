"""SIGTERM to `tessera serve` drains: the coordinator refuses new requests (UNAVAILABLE) and says
NOT_SERVING, the streams in flight run to their end on workers that still serve, then everything
exits, leaving no process behind. (Once, SIGTERM ended every running stream at once: 0 of 8
finished.)"""

import http.client
import json
import os
import signal
import threading
import time

import grpc
import pytest

import harness
from harness import PROMPTS, Stream, check_against, gen_request


def test_sigterm_drains(tessera_bin, model, api, offline):
    n, max_tokens = 8, 48
    prompts = [PROMPTS[i] for i in range(n)]
    refs = offline.many([dict(prompt=p, max_tokens=max_tokens, ignore_eos=True) for p in prompts])
    s = harness.Serve(tessera_bin, model, replicas=2, threads=1, name="drain", extra=["--drain-timeout", "60"])
    s.start()
    try:
        s.wait_ready_groups(2, timeout=60)
        streams, threads = harness.start_streams(
            s.stub, [gen_request(p, max_tokens, ignore_eos=True) for p in prompts])
        s.send_signal(signal.SIGTERM)
        t_term = time.monotonic()

        # A new request is refused while the old ones finish.
        def refused():
            late = Stream(s.stub, gen_request("Hello", 4), timeout=10).run()
            return late.code == grpc.StatusCode.UNAVAILABLE and late
        late = harness.wait_for(refused, 10, interval=0.05, what="a new request to be refused")
        assert "draining" in late.details or "connect" in late.details.lower(), late.describe()
        # readiness says NOT_SERVING at once, liveness SERVING while it drains
        hp = api.health_pb.HealthCheckRequest
        serving = api.health_pb.HealthCheckResponse.SERVING
        if s.proc.poll() is None and "connect" not in late.details.lower():
            assert s.health.Check(hp(service="readiness"), timeout=5).status != serving
            assert s.health.Check(hp(service="liveness"), timeout=5).status == serving

        for t in threads:
            t.join(max(0.0, t_term + 90 - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "streams still open 90 s after SIGTERM"
        for st, ref, p in zip(streams, refs, prompts):
            problems = check_against(st, ref, max_tokens)
            assert not problems, "%r after SIGTERM: %s" % (p[:30], problems)
        rc = s.proc.wait(30)
        assert rc == 0, "serve exited %d after draining" % rc
        print("drained: %d of %d streams finished; serve exited %.1f s after SIGTERM" % (
            n, n, time.monotonic() - t_term))
    finally:
        s.stop()
    assert not s.leftovers, "left running after serve exited: %s" % s.leftovers
    s.cleanup()


# -- 32 streams over both transports, and the drain's time bound --------------------------------


class SSE:
    """One streaming /v1/completions call over raw HTTP, read to its end: the status, the text,
    the finish reason, and an error event if the stream broke after it began."""

    def __init__(self, port, prompt, max_tokens):
        self.port, self.prompt, self.max_tokens = port, prompt, max_tokens
        self.status = self.finish = self.error = self.exc = None
        self.text, self.done, self.first = "", False, threading.Event()

    def run(self):
        body = json.dumps({"model": "", "prompt": self.prompt, "max_tokens": self.max_tokens,
                           "ignore_eos": True, "stream": True})
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
            r = c.getresponse()
            self.status = r.status
            if r.status != 200:
                self.error = json.loads(r.read())["error"]
                return self
            for line in r:
                line = line.decode().strip()
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    self.done = True
                    continue
                ev = json.loads(line[6:])
                if "error" in ev:
                    self.error = ev["error"]
                    continue
                ch = ev["choices"][0]
                self.text += ch.get("text") or ""
                if self.text:
                    self.first.set()
                if ch.get("finish_reason"):
                    self.finish = ch["finish_reason"]
        except Exception as e:  # noqa: BLE001 - a refused or reset connection: described below
            self.exc = e
        finally:
            c.close()
        return self

    def describe(self):
        return "status=%s finish=%s done=%s error=%r exc=%r text=%r" % (
            self.status, self.finish, self.done, self.error, self.exc, self.text[:60])


def serve_processes(s):
    """serve's children (coordinator, workers) by pid, from serve.json."""
    info = s.read_json() or {}
    pids = [info.get("coordinator_pid")] + [w.get("pid") for w in info.get("workers", [])]
    return [p for p in pids if p]


@pytest.mark.parametrize("drain_s,max_tokens", [(60, 40), (3, 2000)], ids=["finish", "cut"])
def test_sigterm_drains_32_streams_grpc_and_http(tessera_bin, model, api, offline, drain_s, max_tokens):
    """16 gRPC and 16 HTTP streams in flight at SIGTERM. With time enough (drain "finish"), each
    ends complete and equal to the request sent alone; with --drain-timeout 3 and streams far
    longer (drain "cut"), each still ends: complete, or UNAVAILABLE (gRPC) / an error event or 503
    (HTTP), never hanging. Either way every process has exited by --drain-timeout + 5 s."""
    prompts = [PROMPTS[i] for i in range(8)]
    refs = offline.many([dict(prompt=p, max_tokens=max_tokens, ignore_eos=True) for p in prompts]) \
        if drain_s == 60 else None
    http_port = harness.free_port()
    s = harness.Serve(tessera_bin, model, replicas=2, threads=1, name="drain32",
                      extra=["--drain-timeout", str(drain_s), "--http-port", str(http_port)])
    s.start()
    try:
        s.wait_ready_groups(2, timeout=60)
        children = serve_processes(s)
        assert len(children) == 3, s.read_json()
        https = [SSE(http_port, prompts[i % 8], max_tokens) for i in range(16)]
        threads = [threading.Thread(target=h.run, daemon=True) for h in https]
        for t in threads:
            t.start()
        grpcs, gthreads = harness.start_streams(
            s.stub, [gen_request(prompts[i % 8], max_tokens, ignore_eos=True) for i in range(16)],
            timeout=180, first_within=90)
        threads = gthreads + threads
        for i, h in enumerate(https):
            assert h.first.wait(90), "HTTP stream %d got no text: %s" % (i, h.describe())
        s.send_signal(signal.SIGTERM)
        t_term = time.monotonic()

        # new requests are refused on both transports while the old ones go on
        late = harness.wait_for(lambda: (lambda st: st.code is not None and st)(
            Stream(s.stub, gen_request("Hello", 4), timeout=10).run()), 10, interval=0.05,
            what="a new gRPC request to be refused")
        assert late.code == grpc.StatusCode.UNAVAILABLE, late.describe()
        if drain_s == 60:
            h = SSE(http_port, "Hello", 4).run()
            assert h.status == 503 or h.exc is not None, h.describe()

        bound = drain_s + 5
        for t in threads:
            t.join(max(0.0, t_term + bound + 5 - time.monotonic()))
        hung = [x.describe() for x, t in zip(grpcs + https, threads) if t.is_alive()]
        assert not hung, "%d streams still open %d s after SIGTERM: %s" % (len(hung), bound + 5, hung[:3])
        rc = s.proc.wait(max(1.0, t_term + bound - time.monotonic()))
        t_exit = time.monotonic() - t_term
        for p in children:
            assert not harness.pid_alive(p), "pid %d alive after serve exited" % p
        assert rc == 0, "serve exited %d after draining" % rc
        assert t_exit <= bound, "serve exited %.1f s after SIGTERM, --drain-timeout %d" % (t_exit, drain_s)

        complete = cut = 0
        for i, st in enumerate(grpcs):
            if drain_s == 60:
                problems = check_against(st, refs[i % 8], max_tokens)
                assert not problems, "gRPC %d after SIGTERM: %s" % (i, problems)
                complete += 1
            elif st.code is None:
                assert st.error is None and st.finish == "length" and len(st.ids) == max_tokens, st.describe()
                complete += 1
            else:
                assert st.code == grpc.StatusCode.UNAVAILABLE, st.describe()
                cut += 1
        for i, h in enumerate(https):
            if h.finish == "length" and h.done and h.error is None:
                if drain_s == 60:
                    assert h.text == refs[i % 8].text, "HTTP %d: %r != %r" % (i, h.text, refs[i % 8].text)
                complete += 1
            else:
                assert drain_s != 60, "HTTP %d did not complete: %s" % (i, h.describe())
                # a stream already begun (200) can only say it broke in an event of its own
                assert h.status == 200 and h.error is not None and h.done, h.describe()
                assert h.error.get("code") == "service_unavailable", h.describe()
                cut += 1
        print("drain %d s: %d complete, %d ended UNAVAILABLE; serve exited %.1f s after SIGTERM" % (
            drain_s, complete, cut, t_exit))
        if drain_s != 60:
            assert cut > 0, "streams of %d tokens all finished within 3 s: the test does not cut" % max_tokens
    finally:
        s.stop()
    assert not s.leftovers, "left running after serve exited: %s" % s.leftovers
    s.cleanup()


def test_worker_sigterm_drains_rolling_restart(tessera_bin, model, api, offline):
    """SIGTERM to one group's leader, then the other's once it is back: each leaves routing at
    once and finishes the streams it runs, so a rolling restart of both replicas loses no request
    (streams that began on it end complete, equal to the request sent alone; new ones go to the
    other replica). Each worker exits 0 and serve starts it again."""
    n, max_tokens = 8, 40
    prompts = [PROMPTS[i] for i in range(n)]
    refs = offline.many([dict(prompt=p, max_tokens=max_tokens, ignore_eos=True) for p in prompts])
    s = harness.Serve(tessera_bin, model, replicas=2, threads=1, name="rolling")
    s.start()
    try:
        s.wait_ready_groups(2, timeout=60)
        for wid in ("w0", "w1"):
            pid = s.worker_pid(wid)
            streams, threads = harness.start_streams(
                s.stub, [gen_request(p, max_tokens, ignore_eos=True) for p in prompts])
            os.kill(pid, signal.SIGTERM)
            # while it drains, new requests are served (by the other replica)
            during = Stream(s.stub, gen_request(prompts[0], max_tokens, ignore_eos=True), timeout=120).run()
            assert not check_against(during, refs[0], max_tokens), during.describe()
            for t in threads:
                t.join(90)
            assert not any(t.is_alive() for t in threads), "streams still open 90 s after SIGTERM"
            for st, ref, p in zip(streams, refs, prompts):
                problems = check_against(st, ref, max_tokens)
                assert not problems, "%r after %s's SIGTERM: %s" % (p[:30], wid, problems)
            harness.wait_for(lambda: not harness.pid_alive(pid), 30, what="%s to exit" % wid)
            log = (s.dir / ("worker-%s.log" % wid[1:])).read_text(errors="replace")
            assert "draining" in log or "stopping" in log, harness.tail(s.dir / ("worker-%s.log" % wid[1:]))
            err = (s.base / "serve.stderr").read_text(errors="replace")
            assert "%s was killed" % wid not in err, err[-2000:]
            harness.wait_for(lambda: s.worker_pid(wid) not in (None, pid), 30, what="%s restarted" % wid)
            s.wait_ready_groups(2, timeout=90)
        print("rolling restart of w0 then w1: %d of %d streams each time complete" % (n, n))
    finally:
        s.stop()
    assert not s.leftovers, "left running after serve exited: %s" % s.leftovers
    s.cleanup()
