"""A group of several ranks (tp 3 under mpirun) serving, and one of its FOLLOWER ranks killed: the
group's streams end UNAVAILABLE within 10 s instead of hanging in a collective, serve restarts the
unit, and the new group answers like the old one (equal to offline generate)."""

import os
import signal
import subprocess
import threading
import time

import grpc
import pytest

import harness
from harness import PROMPTS, Stream, check_against, gen_request


@pytest.fixture(scope="module")
def tp3(tessera_bin, model, api):
    with harness.running(tessera_bin, model, replicas=1, threads=1, extra=("--tp", "3"), name="tp3") as s:
        yield s


def ranks_of(unit_pid):
    """The unit's worker ranks: `tessera worker` processes under the same mpirun as leader_pid."""
    out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    rows = [l.split(None, 2) for l in out.splitlines()[1:]]
    # serve.json holds the pid serve started: for a unit of several ranks, `tessera worker`
    # re-executes itself as mpirun, whose children are the ranks
    return [int(p) for p, pp, a in rows if int(pp) == unit_pid and " worker " in a]


def test_follower_rank_killed(tp3, offline):
    s = tp3
    prompt = PROMPTS[1]
    ref = offline(prompt=prompt, max_tokens=12)
    st = Stream(s.stub, gen_request(prompt, 12), timeout=60).run()
    assert not check_against(st, ref, 12), "tp 3 before the kill: %s" % check_against(st, ref, 12)

    unit = s.read_json()["workers"][0]["pid"]
    ranks = ranks_of(unit)
    assert len(ranks) == 3, "expected 3 ranks under pid %d, found %s" % (unit, ranks)
    got = threading.Event()
    long = Stream(s.stub, gen_request(PROMPTS[9], 2000, ignore_eos=True), timeout=60,
                  on_msg=lambda _st, m: _st.ids and got.set())
    t = threading.Thread(target=long.run, daemon=True)
    t.start()
    assert got.wait(60), "no token before the kill: %s" % long.describe()
    victim = max(ranks)  # not the leader: ranks start in order, rank 0 first
    os.kill(victim, signal.SIGKILL)
    t_kill = time.monotonic()
    t.join(10)
    assert not t.is_alive(), "the stream still runs 10 s after a rank died: %s" % long.describe()[-200:]
    assert long.code == grpc.StatusCode.UNAVAILABLE, long.describe()[-300:]
    assert long.t_end - t_kill <= 10

    def restarted():
        pid = s.worker_pid("w0")
        return pid and pid != unit and harness.pid_alive(pid) and pid

    harness.wait_for(restarted, 30, interval=0.2, what="serve to restart the tp 3 unit")
    s.wait_ready_groups(1, timeout=60)
    st = Stream(s.stub, gen_request(prompt, 12), timeout=60).run()
    problems = check_against(st, ref, 12)
    assert not problems, "after the restart: %s" % problems
