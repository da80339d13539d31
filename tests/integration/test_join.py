"""Continuous batching: new requests join a batch that is already generating, and nothing
changes in anyone's tokens."""

import threading
import time

from harness import PROMPTS, Stream, check_against, gen_request, run_parallel


def test_join(served, offline):
    long_prompts = [PROMPTS[1], PROMPTS[9]]
    short_prompts = [PROMPTS[i] for i in (2, 3, 5, 7, 10, 14)]
    long_n, short_n = 200, 8
    long_refs = offline.many([dict(prompt=p, max_tokens=long_n, ignore_eos=True) for p in long_prompts])
    short_refs = offline.many([dict(prompt=p, max_tokens=short_n) for p in short_prompts])
    served.wait_idle(timeout=30)
    before = served.group_stats()

    # One long stream per replica (the router spreads them), so whichever replica a short request
    # lands on, it joins a running batch.
    started = [threading.Event() for _ in long_prompts]

    def on_msg(i):
        return lambda s, m: len(s.ids) >= 5 and started[i].set()

    longs = [Stream(served.stub, gen_request(p, long_n, ignore_eos=True), timeout=120, on_msg=on_msg(i))
             for i, p in enumerate(long_prompts)]
    threads = [threading.Thread(target=s.run, daemon=True) for s in longs]
    for t in threads:
        t.start()
    for i, e in enumerate(started):
        assert e.wait(60), "long stream %d streamed no 5 tokens in 60 s: %s" % (i, longs[i].describe())

    t_shorts = time.monotonic()
    shorts = [Stream(served.stub, gen_request(p, short_n), timeout=120) for p in short_prompts]
    run_parallel([s.run for s in shorts], timeout=120)
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "long streams did not end"

    problems = []
    for s, ref, p in zip(longs, long_refs, long_prompts):
        problems += ["long %r: %s" % (p[:30], e) for e in check_against(s, ref, long_n)]
    for s, ref, p in zip(shorts, short_refs, short_prompts):
        problems += ["short %r: %s" % (p[:30], e) for e in check_against(s, ref, short_n)]
    assert not problems, "\n".join(problems)

    long_end = min(s.t_end for s in longs)
    for s, p in zip(shorts, short_prompts):
        assert s.t_first is not None and s.t_first < long_end, \
            "short %r: first token %.2f s after start, the first long stream ended at %.2f s: it did not " \
            "join the running batch" % (p[:30], s.t_first - t_shorts, long_end - t_shorts)
        assert s.t_end < long_end, \
            "short %r (%d tokens) ended after a 200-token stream that started before it" % (p[:30], short_n)

    after = served.group_stats()
    joined = sum(after[g].joined_running - (before[g].joined_running if g in before else 0) for g in after)
    assert joined > 0, "joined_running did not grow: before %s after %s" % (before, after)
    assert max(s.max_batch for s in after.values()) > 1, after
    print("joined_running grew by %d; max_batch %s" % (joined, [s.max_batch for s in after.values()]))
