"""`tessera serve --pp 2`: one replica in two pipeline stages (mpirun, CPU), its steps pipelined
(two in flight, each stage on its own half of the batch) and sampled on the last stage.

Eight streams at once, half greedy and half seeded: the greedy ones equal `tessera generate` on
one rank (ids, text, finish); the seeded ones give the same tokens again after the group sat idle
past its idle-message period (TSR_STEP_IDLE_S, 5 s: the idle message travels down the stages);
the group's WorkerStats show more steps than decode rounds (the batch was split); and SIGTERM
stops everything, leaving nothing behind."""

import time

import harness
from harness import PROMPTS, Stream, check_against, gen_request, run_parallel

N = 24


def requests():
    return [gen_request(PROMPTS[i], N, ignore_eos=True,
                        **({} if i % 2 == 0 else dict(temperature=0.8, top_p=0.95, seed=100 + i)))
            for i in range(8)]


def run_all(s):
    streams = [Stream(s.stub, r, timeout=120) for r in requests()]
    run_parallel([x.run for x in streams], timeout=150)
    for i, x in enumerate(streams):
        assert x.code is None and x.error is None and len(x.ids) == N, "stream %d: %s" % (i, x.describe())
    return streams


def test_pp2_pipelined(tessera_bin, model, api, offline):
    refs = offline.many([dict(prompt=PROMPTS[i], max_tokens=N, ignore_eos=True) for i in range(0, 8, 2)])
    s = harness.Serve(tessera_bin, model, replicas=1, threads=1, name="pp2", extra=["--pp", "2"])
    s.start()
    try:
        s.wait_ready_groups(1, timeout=120)
        before = next(iter(s.group_stats().values()))
        first = run_all(s)
        for k, ref in enumerate(refs):
            problems = check_against(first[2 * k], ref, N)
            assert not problems, "greedy stream %d at pp = 2: %s" % (2 * k, problems)
        st = next(iter(s.group_stats().values()))
        steps = st.steps - before.steps
        assert steps > N + 1, "%d steps for 8 streams of %d tokens: the stages were not pipelined" % (steps, N)
        time.sleep(7)  # past the idle period: an idle message goes down the stages
        again = run_all(s)
        for i in range(1, 8, 2):
            assert again[i].ids == first[i].ids, "seeded stream %d differs after the idle: %s vs %s" % (
                i, again[i].ids, first[i].ids)
        print("pp = 2: 4 greedy streams equal one rank's, 4 seeded equal across an idle period; "
              "%d steps for %d decode rounds" % (steps, N))
    finally:
        t0 = time.monotonic()
        s.stop()
        took = time.monotonic() - t0
    assert not s.leftovers, "left running after serve exited: %s" % s.leftovers
    assert took < 30, "serve took %.1f s to stop" % took
    s.cleanup()
