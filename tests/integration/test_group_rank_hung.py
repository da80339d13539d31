"""A FOLLOWER rank of a group that hangs (SIGSTOP: alive, holding its sockets, never answering)
leaves the leader waiting in a collective that will not end, while the leader's etcd lease stays
alive. The leader's step watchdog (--step-timeout) takes the group out of routing and exits: the
group's streams end UNAVAILABLE within the step timeout plus a margin, none hangs, mpirun ends the
other ranks, and serve brings the unit back."""

import os
import signal
import threading
import time

import grpc
import pytest

import harness
from harness import PROMPTS, Stream, check_against, gen_request
from test_group_rank_killed import ranks_of

STEP_TIMEOUT_S = 3
BOUND_S = STEP_TIMEOUT_S + 5


@pytest.fixture(scope="module")
def pp2(tessera_bin, model, api):
    with harness.running(tessera_bin, model, replicas=1, threads=1, name="hung",
                         extra=("--pp", "2", "--step-timeout", str(STEP_TIMEOUT_S))) as s:
        yield s


def test_follower_rank_hung(pp2, offline):
    s = pp2
    prompt = PROMPTS[1]
    ref = offline(prompt=prompt, max_tokens=12)
    unit = s.read_json()["workers"][0]["pid"]
    ranks = ranks_of(unit)
    assert len(ranks) == 2, "expected 2 ranks under pid %d, found %s" % (unit, ranks)
    got = threading.Event()
    long = Stream(s.stub, gen_request(PROMPTS[9], 2000, ignore_eos=True), timeout=60,
                  on_msg=lambda _st, m: _st.ids and got.set())
    t = threading.Thread(target=long.run, daemon=True)
    t.start()
    assert got.wait(60), "no token before the hang: %s" % long.describe()
    victim = max(ranks)  # rank 1: the follower
    os.kill(victim, signal.SIGSTOP)
    t_stop = time.monotonic()
    try:
        t.join(BOUND_S + 2)
        assert not t.is_alive(), "the stream still runs %d s after a rank hung" % (BOUND_S + 2)
        assert long.code == grpc.StatusCode.UNAVAILABLE, long.describe()[-300:]
        took = long.t_end - t_stop
        assert took <= BOUND_S, "ended %.1f s after the hang (bound %d s)" % (took, BOUND_S)
        print("follower hung: the stream ended UNAVAILABLE %.1f s later" % took)
    finally:
        try:
            os.kill(victim, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def restarted():
        pid = s.worker_pid("w0")
        return pid and pid != unit and harness.pid_alive(pid) and pid

    harness.wait_for(restarted, 30, interval=0.2, what="serve to restart the unit")
    s.wait_ready_groups(1, timeout=60)
    harness.wait_for(lambda: not harness.pid_alive(victim), 15, what="the hung rank to be gone")
    st = Stream(s.stub, gen_request(prompt, 12), timeout=60).run()
    problems = check_against(st, ref, 12)
    assert not problems, "after the restart: %s" % problems
