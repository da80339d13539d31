"""Cancelled streams end promptly, the others are unharmed, and the replicas get their KV blocks
back."""

import time

import grpc

from harness import PROMPTS, Stream, check_against, gen_request, run_parallel


def test_cancel(served, offline):
    n = 20
    jobs = []
    for i in range(n):
        cancel = i % 2 == 0
        prompt = PROMPTS[(i * 3) % 16]
        # The cancelled ones would run for minutes (2000 tokens, no EOS) if cancelling did nothing.
        jobs.append((prompt, 2000 if cancel else 24, cancel))
    refs = offline.many([dict(prompt=p, max_tokens=m) for p, m, c in jobs if not c])
    served.wait_idle(timeout=30)

    streams = [Stream(served.stub, gen_request(p, m, ignore_eos=True if c else None), timeout=120,
                      cancel_after=3 if c else None) for p, m, c in jobs]
    run_parallel([s.run for s in streams], timeout=150)
    t_done = time.monotonic()

    problems = []
    refs = iter(refs)
    for i, (s, (p, m, c)) in enumerate(zip(streams, jobs)):
        if c:
            if s.t_cancel is None:
                problems.append("stream %d: never cancelled (%s)" % (i, s.describe()))
            elif s.code != grpc.StatusCode.CANCELLED:
                problems.append("stream %d: after cancel() ended with %s, want CANCELLED" % (i, s.describe()))
            elif s.t_end - s.t_cancel > 2.0:
                problems.append("stream %d: ended %.1f s after cancel()" % (i, s.t_end - s.t_cancel))
        else:
            for e in check_against(s, next(refs), m):
                problems.append("stream %d (not cancelled): %s" % (i, e))
    assert not problems, "\n".join(problems)

    st = served.wait_idle(timeout=10)
    waited = time.monotonic() - t_done
    # Nothing keeps decoding for the cancelled sequences.
    a = served.group_stats()
    time.sleep(1.0)
    b = served.group_stats()
    grew = {g: b[g].decode_tokens - a[g].decode_tokens for g in b if g in a and b[g].decode_tokens != a[g].decode_tokens}
    assert not grew, "decode_tokens still growing after every stream ended: %s" % grew
    print("blocks back %.1f s after the last stream ended: %s" % (
        waited, [(g.group, g.stats.n_free_blocks, g.stats.n_blocks) for g in st.groups]))


def test_deadline(served):
    """A client deadline that passes mid-generation ends the stream DEADLINE_EXCEEDED, and the
    sequence stops on the replica (its blocks come back, nothing keeps decoding)."""
    served.wait_idle(timeout=30)
    s = Stream(served.stub, gen_request(PROMPTS[0], 4000, ignore_eos=True), timeout=1.5).run()
    assert s.code == grpc.StatusCode.DEADLINE_EXCEEDED, s.describe()
    assert s.ids, "no token within the deadline: %s" % s.describe()
    assert s.t_end - s.t_start < 3.0
    served.wait_idle(timeout=10)
    a = served.group_stats()
    time.sleep(1.0)
    b = served.group_stats()
    assert all(b[g].decode_tokens == a[g].decode_tokens for g in b if g in a), (a, b)
