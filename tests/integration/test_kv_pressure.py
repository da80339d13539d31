"""A KV cache too small for the batch: sequences are preempted and recomputed, and every answer
is still exactly the offline one."""

import grpc
import pytest

import harness
from harness import PROMPTS, Stream, check_against, gen_request, run_parallel

BLOCKS = 24  # x 16 positions = 384 positions for 12 sequences of ~80-100


@pytest.fixture(scope="module")
def small_kv(tessera_bin, model, api):
    with harness.running(tessera_bin, model, replicas=1, threads=2, name="kv",
                         extra=["--kv-blocks", str(BLOCKS), "--max-seqs", "16"]) as s:
        yield s


def test_kv_pressure(small_kv, offline):
    s = small_kv
    st = s.status()
    assert st.groups[0].stats.n_blocks == BLOCKS, "--kv-blocks %d, ClusterStatus says %s" % (BLOCKS, st)
    prompts = [p for p in PROMPTS if 8 <= len(p) <= 120][:12]
    n = 64
    jobs = [(prompts[i % len(prompts)] + (" " if i >= len(prompts) else ""), n) for i in range(12)]
    refs = offline.many([dict(prompt=p, max_tokens=m, ignore_eos=True) for p, m in jobs])
    # the deadlines only catch a hang: 180 s ran out once beside stress -c 2 with load average 16
    streams = [Stream(s.stub, gen_request(p, m, ignore_eos=True), timeout=600) for p, m in jobs]
    run_parallel([x.run for x in streams], timeout=620)
    problems = []
    for i, (x, ref, (p, m)) in enumerate(zip(streams, refs, jobs)):
        problems += ["request %d (%r): %s" % (i, p[:30], e) for e in check_against(x, ref, m)]
    assert not problems, "\n".join(problems)
    stats = s.wait_idle(timeout=10).groups[0].stats
    assert stats.preemptions > 0, "no preemptions with %d blocks for 12 x ~%d positions: %s" % (BLOCKS, n + 20, stats)
    print("preemptions %d, max_batch %d, steps %d" % (stats.preemptions, stats.max_batch, stats.steps))


def test_request_larger_than_kv_cache(small_kv):
    """One sequence that can never fit the replica's KV cache is refused at once, not left
    waiting forever."""
    s = small_kv
    x = Stream(s.stub, gen_request(PROMPTS[1], BLOCKS * 16 + 16, ignore_eos=True), timeout=60).run()
    assert x.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), \
        "a request needing more than %d KV positions: %s" % (BLOCKS * 16, x.describe()[:300])
    assert x.details.strip() and x.t_end - x.t_start < 10, x.describe()[:300]
    s.wait_idle(timeout=10)
