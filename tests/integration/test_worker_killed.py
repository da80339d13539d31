"""A worker killed mid-generation under `--no-migration`: its streams end (UNAVAILABLE) instead of
hanging, the other replica keeps serving, and serve restarts the worker, which then takes work
again.

Every stream has streamed a token when the worker dies, and migration is off, so none may go on
elsewhere: exactly the streams on the killed replica end UNAVAILABLE (at least one), every other
one completes with the offline tokens. (With migration on, the default, they go on: test_migration.)"""

import os
import signal
import threading
import time

import grpc
import pytest

import harness
from harness import PROMPTS, Stream, check_against, gen_request, run_parallel


@pytest.fixture(scope="module")
def fresh(tessera_bin, model, api):
    with harness.running(tessera_bin, model, replicas=2, threads=1, name="killed",
                         extra=("--no-migration",)) as s:
        yield s


def test_worker_killed(fresh, offline):
    s = fresh
    long_n = 150
    long_prompts = [PROMPTS[1], PROMPTS[9]]
    long_refs = dict(zip(long_prompts, offline.many(
        [dict(prompt=p, max_tokens=long_n, ignore_eos=True) for p in long_prompts])))
    short_prompts = [PROMPTS[i] for i in (2, 3, 4, 5)]
    short_refs = dict(zip(short_prompts, offline.many([dict(prompt=p, max_tokens=8) for p in short_prompts])))

    info = s.read_json()
    assert info and len(info["workers"]) == 2, info
    victim = info["workers"][0]
    old_pid = victim["pid"]
    assert harness.pid_alive(old_pid), "worker %s pid %d from serve.json is not running" % (victim["id"], old_pid)

    # 8 long streams, 4 on each replica; kill once every one has streamed a token.
    n = 8
    got_one = [threading.Event() for _ in range(n)]
    streams = [Stream(s.stub, gen_request(long_prompts[i % 2], long_n, ignore_eos=True), timeout=60,
                      on_msg=(lambda i: lambda st, m: st.ids and got_one[i].set())(i)) for i in range(n)]
    threads = [threading.Thread(target=st.run, daemon=True) for st in streams]
    for t in threads:
        t.start()
    for i, e in enumerate(got_one):
        assert e.wait(60), "stream %d got no token in 60 s: %s" % (i, streams[i].describe())
    # Where the 8 run. The controller names a one-unit group after its worker (g-<id>).
    running = {g: st.n_running for g, st in s.group_stats().items()}
    victim_group = "g-" + victim["id"]
    os.kill(old_pid, signal.SIGKILL)
    t_kill = time.monotonic()

    # During the outage new requests keep succeeding (on the other replica).
    outage = []
    for p in short_prompts:
        st = Stream(s.stub, gen_request(p, 8), timeout=20).run()
        outage.append(st)
        problems = check_against(st, short_refs[p], 8)
        assert not problems, "request during the outage (%.1f s after the kill): %s" % (
            st.t_start - t_kill, problems)

    for t in threads:
        t.join(max(0.0, t_kill + 10 - time.monotonic()))
    hung = [i for i, t in enumerate(threads) if t.is_alive()]
    assert not hung, "streams %s still open 10 s after the worker died: %s" % (
        hung, [streams[i].describe()[-200:] for i in hung])

    outcome = {"completed": 0, "unavailable": 0}
    for i, st in enumerate(streams):
        if st.code == grpc.StatusCode.UNAVAILABLE:
            assert st.details.strip(), "stream %d: UNAVAILABLE without a message" % i
            assert st.t_end - t_kill <= 10, "stream %d ended %.1f s after the kill" % (i, st.t_end - t_kill)
            outcome["unavailable"] += 1
        else:
            problems = check_against(st, long_refs[long_prompts[i % 2]], long_n)
            assert not problems, "stream %d neither completed correctly nor failed UNAVAILABLE: %s" % (i, problems)
            outcome["completed"] += 1
    print("after the kill:", outcome, "running per group at the kill:", running)
    assert len(running) == 2 and sum(running.values()) == n and all(running.values()), \
        "the %d streams were not in flight on both replicas when the worker was killed: %s" % (n, running)
    assert outcome["unavailable"] >= 1, \
        "no stream failed although %s were running on the killed replica" % running
    assert victim_group in running, "no group %s in %s" % (victim_group, running)
    assert outcome["unavailable"] == running[victim_group], \
        "%d streams ended UNAVAILABLE, but %s was running %d of them (%s): streams that had " \
        "tokens fail exactly when their replica dies, and are not retried" % (
            outcome["unavailable"], victim_group, running[victim_group], running)

    # serve restarts the worker (a new pid in serve.json) and the group becomes ready again.
    def restarted():
        pid = s.worker_pid(victim["id"])
        return pid and pid != old_pid and harness.pid_alive(pid) and pid

    new_pid = harness.wait_for(restarted, max(1.0, t_kill + 30 - time.monotonic()), interval=0.2,
                               what="serve.json to show worker %s restarted" % victim["id"])
    s.wait_ready_groups(2, timeout=max(1.0, t_kill + 30 - time.monotonic()))
    print("worker %s restarted as pid %d, 2 groups ready %.1f s after the kill" % (
        victim["id"], new_pid, time.monotonic() - t_kill))

    # Both groups take work again.
    before = s.group_stats()
    assert len(before) == 2, "stats from %d groups after the restart: %s" % (len(before), s.status())
    jobs = [PROMPTS[i] for i in range(8)]
    refs = offline.many([dict(prompt=p, max_tokens=16) for p in jobs])
    after_streams = [Stream(s.stub, gen_request(p, 16), timeout=60) for p in jobs]
    run_parallel([st.run for st in after_streams], timeout=90)
    for st, ref, p in zip(after_streams, refs, jobs):
        problems = check_against(st, ref, 16)
        assert not problems, "after the restart, %r: %s" % (p[:30], problems)
    after = s.group_stats()
    grew = {g: after[g].decode_tokens - (before[g].decode_tokens if g in before else 0) for g in after}
    assert len(grew) == 2 and all(d > 0 for d in grew.values()), \
        "decode tokens per group after the restart: %s (the restarted replica should take work)" % grew
