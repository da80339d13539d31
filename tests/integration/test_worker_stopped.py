"""A hung leader (SIGSTOP: alive, holding its sockets, answering nothing) must not hang its
requests: its etcd lease runs out, the coordinator sees the group leave, and the streams on it move
to the other replica (request migration: prompt plus the tokens sent, the sampler at the same
position), so no stream pauses longer than the lease TTL plus a margin (docs/reliability.md) and
every one completes with the offline tokens. After SIGCONT the worker finds its lease gone, exits,
and serve brings it back: both replicas serve again."""

import os
import signal
import threading
import time

import pytest

import harness
from harness import PROMPTS, Stream, check_against, gen_request, run_parallel

TTL_S = 3  # tessera worker --ttl default
BOUND_S = TTL_S + 5  # the stated bound: lease TTL + 5 s (etcd's expiry sweep, the watch, CI load)


@pytest.fixture(scope="module")
def fresh(tessera_bin, model, api):
    with harness.running(tessera_bin, model, replicas=2, threads=1, name="stopped") as s:
        yield s


def test_worker_stopped(fresh, offline):
    s = fresh
    long_n = 150
    prompts = [PROMPTS[1], PROMPTS[9]]
    refs = dict(zip(prompts, offline.many([dict(prompt=p, max_tokens=long_n, ignore_eos=True) for p in prompts])))
    short = [PROMPTS[i] for i in (2, 3, 4)]
    short_refs = dict(zip(short, offline.many([dict(prompt=p, max_tokens=8) for p in short])))

    info = s.read_json()
    victim = info["workers"][0]
    pid = victim["pid"]
    assert harness.pid_alive(pid)
    victim_group = "g-%s" % victim["id"]

    n = 8
    got_one = [threading.Event() for _ in range(n)]
    streams = [Stream(s.stub, gen_request(prompts[i % 2], long_n, ignore_eos=True), timeout=90,
                      on_msg=(lambda i: lambda st, m: st.ids and got_one[i].set())(i)) for i in range(n)]
    threads = [threading.Thread(target=st.run, daemon=True) for st in streams]
    for t in threads:
        t.start()
    for i, e in enumerate(got_one):
        assert e.wait(60), "stream %d got no token in 60 s: %s" % (i, streams[i].describe())
    os.kill(pid, signal.SIGSTOP)
    t_stop = time.monotonic()
    try:
        # New requests during the hang are served (retried off the hung replica if routed there).
        for p in short:
            st = Stream(s.stub, gen_request(p, 8), timeout=30).run()
            problems = check_against(st, short_refs[p], 8)
            assert not problems, "request %.1f s into the hang: %s" % (st.t_start - t_stop, problems)

        for t in threads:
            t.join(max(0.0, t_stop + BOUND_S + 90 - time.monotonic()))
        hung = [i for i, t in enumerate(threads) if t.is_alive()]
        assert not hung, "streams %s still open %d s after the leader hung" % (hung, BOUND_S + 90)
        slowest = 0.0
        for i, st in enumerate(streams):
            problems = check_against(st, refs[prompts[i % 2]], long_n)
            assert not problems, "stream %d: %s" % (i, problems)
            pause = max(b - a for a, b in zip(st.times, st.times[1:]))
            assert pause <= BOUND_S, "stream %d paused %.1f s (bound %d s)" % (i, pause, BOUND_S)
            slowest = max(slowest, pause)
        # The router balanced 8 streams over 2 replicas: the hung one had some, and they moved.
        moved = harness.tail(s.dir / "coordinator.log", 400).count("resuming on another replica")
        assert moved >= 1, "no stream moved: was nothing on the hung replica? %s" % s.status()
        print("hang: %d streams resumed on the other replica, the longest pause %.1f s (bound %d s); "
              "all 8 completed" % (moved, slowest, BOUND_S))
        assert victim_group not in {g.group for g in s.status().groups}, "the hung group is still routed"
    finally:
        os.kill(pid, signal.SIGCONT)
    t_cont = time.monotonic()

    # It finds its lease gone and exits; serve starts it again; both replicas take work.
    harness.wait_for(lambda: not harness.pid_alive(pid), 15, what="the resumed worker to exit")
    s.wait_ready_groups(2, timeout=45)
    print("both replicas ready %.1f s after SIGCONT" % (time.monotonic() - t_cont))
    before = s.group_stats()
    jobs = [PROMPTS[i] for i in range(8)]
    job_refs = offline.many([dict(prompt=p, max_tokens=16) for p in jobs])
    after = [Stream(s.stub, gen_request(p, 16), timeout=60) for p in jobs]
    run_parallel([st.run for st in after], timeout=90)
    for st, ref in zip(after, job_refs):
        problems = check_against(st, ref, 16)
        assert not problems, problems
    grew = {g: st.decode_tokens - (before[g].decode_tokens if g in before else 0)
            for g, st in s.group_stats().items()}
    assert len(grew) == 2 and all(d > 0 for d in grew.values()), grew
    s.wait_idle(timeout=20)
