"""Request migration (on by default): a replica that dies or drains after its streams sent tokens
hands them to another replica, which goes on from prompt + the tokens sent, the sampler keyed by
seed and position (worker/sampling.h), so the client's stream just continues.

One etcd, one coordinator and two one-rank workers (w0, w1), started by hand so that a killed
worker stays dead. 24 streams of 200 tokens: 12 greedy, 12 sampled with a seed (4 of those with a
frequency penalty too, which counts the tokens generated before the move as generated). First an
undisturbed run, then:

- test_sigkill: SIGKILL one replica mid-stream. Every stream completes, and its token ids, text and
  finish equal the undisturbed run's; the coordinator counts the migrations.
- test_sigterm_drain: the same with SIGTERM (the worker drains for its --drain-timeout of 1 s, then
  hands the rest over).
- test_every_replica_dead: both killed mid-stream: every stream ends UNAVAILABLE, with a message,
  within 10 s of the kill; none hangs.
"""

import re
import signal
import time
import urllib.request

import grpc
import pytest

import harness
from handcluster import Coordinator, Etcd, logs, start_worker
from harness import PROMPTS, Stream, gen_request, run_parallel

N_TOKENS = 200
WORKER_ARGS = ["--kv-blocks", "640", "--drain-timeout", "1"]


def requests():
    reqs = [gen_request(PROMPTS[i], N_TOKENS, ignore_eos=True) for i in range(12)]
    for i in range(12):
        extra = dict(frequency_penalty=0.5) if i % 3 == 0 else {}
        reqs.append(gen_request(PROMPTS[(i + 3) % len(PROMPTS)], N_TOKENS, ignore_eos=True, temperature=0.9,
                                top_p=0.95, seed=1000 + i, **extra))
    return reqs


class Cluster:
    def __init__(self, tessera, model, base):
        self.tessera, self.model, self.base = tessera, model, base
        self.etcd = Etcd(base).start()
        self.workers = {w: self.start(w) for w in ("w0", "w1")}
        self.http = harness.free_port()
        self.coord = Coordinator(tessera, model, self.etcd.url, "coord", base,
                                 extra=["--http-port", self.http])
        self.coord.wait_groups({"g-w0", "g-w1"}, 90)

    def start(self, w):
        return start_worker(self.tessera, self.model, self.etcd.url, w, self.base, extra=WORKER_ARGS)

    def restart(self, w):
        self.workers[w].kill()
        self.workers[w] = self.start(w)
        self.coord.wait_groups({"g-" + w}, 90)

    def migrations(self):
        body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.http, timeout=10).read().decode()
        m = re.search(r"^tessera:request_migrations_total\{[^}]*\} (\S+)$", body, re.M)
        assert m, "no tessera:request_migrations_total in the coordinator's /metrics"
        return float(m.group(1))

    def running(self):
        return {g.group: g.stats.n_running for g in self.coord.status().groups}

    def close(self):
        self.coord.close()
        for p in self.workers.values():
            p.kill()
        self.etcd.kill()


@pytest.fixture(scope="module")
def cluster(tessera_bin, model, api, tmp_path_factory):
    c = Cluster(tessera_bin, model, tmp_path_factory.mktemp("migration"))
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def undisturbed(cluster):
    streams = [Stream(cluster.coord.stub, r, timeout=300) for r in requests()]
    run_parallel([s.run for s in streams], timeout=320)
    for i, s in enumerate(streams):
        assert s.code is None and s.error is None and len(s.ids) == N_TOKENS, "stream %d: %s" % (i, s.describe())
    return streams


def disturbed(cluster, undisturbed, victim, sig):
    """Starts the 24 streams, waits until each has sent 20 tokens, sends sig to the victim's worker,
    and checks every stream against the undisturbed run. Returns (streams on the victim, moved)."""
    before = cluster.migrations()
    streams, threads = harness.start_streams(cluster.coord.stub, requests(), timeout=300)
    harness.wait_for(lambda: min(len(s.ids) for s in streams) >= 20, 120, interval=0.05,
                     what="every stream to send 20 tokens")
    on_victim = cluster.running().get("g-" + victim, 0)
    assert on_victim > 0, "nothing runs on %s: %s" % (victim, cluster.running())
    sent = sum(len(s.ids) for s in streams)
    cluster.workers[victim].p.send_signal(sig)
    t_sig = time.monotonic()
    for t in threads:
        t.join(max(0.0, t_sig + 300 - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "streams still open 300 s after the signal"
    for i, (s, ref) in enumerate(zip(streams, undisturbed)):
        assert s.code is None and s.error is None, "stream %d: %s\n%s" % (i, s.describe()[-400:], logs(cluster.base))
        assert s.ids == ref.ids, "stream %d: the token ids differ from the undisturbed run's\n got %s\nwant %s" % (
            i, s.ids, ref.ids)
        assert s.text == ref.text and s.finish == ref.finish, "stream %d: %r %s != %r %s" % (
            i, s.text, s.finish, ref.text, ref.finish)
        assert s.last.usage.completion_tokens == N_TOKENS, s.last.usage
        assert s.last.usage.prompt_tokens == ref.last.usage.prompt_tokens, (s.last.usage, ref.last.usage)
    moved = cluster.migrations() - before
    assert moved >= 1, "no stream moved, though %d ran on %s" % (on_victim, victim)
    print("%s to %s: %d of 24 streams ran there (%d tokens sent in all), %d resumed on the other replica; "
          "all 24 equal the undisturbed run" % (signal.Signals(sig).name, victim, on_victim, sent, moved))
    return on_victim, moved


def test_sigkill(cluster, undisturbed):
    disturbed(cluster, undisturbed, "w0", signal.SIGKILL)
    cluster.restart("w0")


def test_sigterm_drain(cluster, undisturbed):
    disturbed(cluster, undisturbed, "w1", signal.SIGTERM)
    assert cluster.workers["w1"].p.wait(30) == 0, "the drained worker did not exit cleanly"
    cluster.restart("w1")


def test_every_replica_dead(cluster):
    cluster.coord.wait_groups({"g-w0", "g-w1"}, 90)
    streams, threads = harness.start_streams(cluster.coord.stub, requests()[:8], timeout=120)
    for w in cluster.workers.values():
        w.p.send_signal(signal.SIGKILL)
    t_kill = time.monotonic()
    for t in threads:
        t.join(max(0.0, t_kill + 15 - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "streams still open 15 s after every replica died"
    slowest = 0.0
    for i, s in enumerate(streams):
        assert s.code == grpc.StatusCode.UNAVAILABLE and s.details.strip(), "stream %d: %s" % (i, s.describe()[-300:])
        took = s.t_end - t_kill
        assert took <= 10, "stream %d ended %.1f s after the kill" % (i, took)
        slowest = max(slowest, took)
    # a new request: UNAVAILABLE too, within the coordinator's wait for a ready replica (5 s)
    late = Stream(cluster.coord.stub, gen_request("Hello", 4), timeout=30).run()
    assert late.code == grpc.StatusCode.UNAVAILABLE and late.t_end - late.t_start <= 10, late.describe()
    print("every replica dead: 8 of 8 streams UNAVAILABLE, the last %.1f s after the kill; a new request "
          "UNAVAILABLE in %.1f s (%s)" % (slowest, late.t_end - late.t_start, late.details))
