"""--max-queue bounds what the coordinator accepts (RESOURCE_EXHAUSTED beyond it) and --max-seqs
bounds what a replica runs at once."""

import threading
import time

import grpc
import pytest

import harness
from harness import PROMPTS, Stream, check_against, gen_request, run_parallel

QUEUE, SEQS = 4, 2


@pytest.fixture(scope="module")
def bounded(tessera_bin, model, api):
    with harness.running(tessera_bin, model, replicas=1, threads=2, name="queue",
                         extra=["--max-queue", str(QUEUE), "--max-seqs", str(SEQS)]) as s:
        yield s


def test_queue_full(bounded, offline):
    s = bounded
    n, m = 12, 64
    jobs = [PROMPTS[i] for i in range(n)]
    refs = offline.many([dict(prompt=p, max_tokens=m, ignore_eos=True) for p in jobs])

    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            try:
                st = s.status(timeout=5)
                samples.append((st.in_flight, st.queued, st.groups[0].stats.n_running, st.groups[0].stats.n_waiting))
            except grpc.RpcError:
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    streams = [Stream(s.stub, gen_request(p, m, ignore_eos=True), timeout=120) for p in jobs]
    try:
        run_parallel([x.run for x in streams], timeout=150)
    finally:
        stop.set()
        sampler.join(10)

    ok = rejected = 0
    for x, ref, p in zip(streams, refs, jobs):
        if x.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            assert x.details.strip() and not x.msgs, x.describe()
            rejected += 1
        else:
            problems = check_against(x, ref, m)
            assert not problems, "%r: %s" % (p[:30], problems)
            ok += 1
    assert rejected >= 1, "12 requests at once with --max-queue %d: none refused" % QUEUE
    assert ok >= QUEUE, "only %d of 12 accepted with --max-queue %d" % (ok, QUEUE)
    assert samples, "no ClusterStatus samples during the load"
    peak = [max(c) for c in zip(*samples)]
    assert max(a + q for a, q, _, _ in samples) <= QUEUE, \
        "in_flight + queued above --max-queue %d (%d samples, peaks in_flight/queued/running/waiting %s)" % (
            QUEUE, len(samples), peak)
    assert peak[2] <= SEQS, "n_running %d above --max-seqs %d (peaks in_flight/queued/running/waiting %s)" % (
        peak[2], SEQS, peak)
    stats = s.wait_idle(timeout=10).groups[0].stats
    assert stats.max_batch <= SEQS, "max_batch %d with --max-seqs %d" % (stats.max_batch, SEQS)
    print("accepted %d, refused %d; peaks in_flight/queued/running/waiting %s" % (ok, rejected, peak))

    # Once the load is gone, requests are accepted again.
    ref = offline(prompt=PROMPTS[2], max_tokens=8)
    x = Stream(s.stub, gen_request(PROMPTS[2], 8), timeout=60).run()
    assert not check_against(x, ref, 8), x.describe()
