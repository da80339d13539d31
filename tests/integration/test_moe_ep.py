"""`tessera serve --ep`: a mixture-of-experts model served by expert-parallel groups (mpirun, CPU).

synthetic:mixtral-tiny (8 experts, 2 a token) in one replica whose experts are spread over ep
ranks, each rank holding only its share (tests/mpi/test_moe_ep_np2/np4 check the bytes):
- ep = 2 with tp = 1: two ranks, each running the whole batch's attention, the tokens' expert
  rows exchanged by all-to-all;
- ep = 4 with tp = 2: two attention groups of two tp ranks each, four expert shares.

32 concurrent greedy streams, each from its own token-id prompt (the synthetic model has no
tokenizer), equal `tessera generate --prompt-ids` on one rank: ids, finish and usage
(harness.check_against). Then SIGTERM stops everything, leaving nothing behind."""

import pytest

import harness
from harness import Offline, Stream, check_against, gen_request, run_parallel

MODEL = "synthetic:mixtral-tiny"
N, STREAMS = 12, 32


def prompt(i):
    # distinct prompts of 3 to 13 tokens over the 256-token vocabulary
    return [(7 + 31 * i + 17 * k) % 256 for k in range(3 + i % 11)]


@pytest.fixture(scope="module")
def refs(tessera_bin):
    off = Offline(tessera_bin, MODEL)
    return off.many([dict(prompt_ids=prompt(i), max_tokens=N, ignore_eos=True) for i in range(STREAMS)])


@pytest.mark.parametrize("layout", [["--ep", "2"], ["--tp", "2", "--ep", "4"]], ids=["ep2", "tp2_ep4"])
def test_ep_serves_as_one_rank(tessera_bin, refs, layout):
    s = harness.Serve(tessera_bin, MODEL, replicas=1, threads=1, name="ep", extra=layout)
    s.start()
    try:
        s.wait_ready_groups(1, timeout=120)
        streams = [Stream(s.stub, gen_request(token_ids=prompt(i), max_tokens=N, ignore_eos=True), timeout=120)
                   for i in range(STREAMS)]
        run_parallel([x.run for x in streams], timeout=150)
        for i, (x, ref) in enumerate(zip(streams, refs)):
            problems = check_against(x, ref, N, prompt_tokens=len(prompt(i)))
            assert not problems, "stream %d at %s: %s" % (i, " ".join(layout), problems)
        ep = layout[layout.index("--ep") + 1]
        log = (s.dir / "worker-0.log").read_text(errors="replace")
        assert "experts over ep %s" % ep in log, "the worker does not say it spreads experts over ep %s" % ep
        distinct = len({tuple(r.ids) for r in refs})
        assert distinct > STREAMS // 2, "only %d distinct outputs: the prompts hardly matter" % distinct
        print("%s: %d concurrent greedy streams equal one rank's (%d distinct outputs)" %
              (" ".join(layout), STREAMS, distinct))
    finally:
        s.stop()
    assert not s.leftovers, "left running after serve exited: %s" % s.leftovers
    s.cleanup()
