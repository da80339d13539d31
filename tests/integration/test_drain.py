"""SIGTERM to `tessera serve` drains: the coordinator refuses new requests (UNAVAILABLE) and says
NOT_SERVING, the streams in flight run to their end on workers that still serve, then everything
exits, leaving no process behind. (Once, SIGTERM ended every running stream at once: 0 of 8
finished.)"""

import signal
import threading
import time

import grpc

import harness
from harness import PROMPTS, Stream, check_against, gen_request


def test_sigterm_drains(tessera_bin, model, api, offline):
    n, max_tokens = 8, 48
    prompts = [PROMPTS[i] for i in range(n)]
    refs = offline.many([dict(prompt=p, max_tokens=max_tokens, ignore_eos=True) for p in prompts])
    s = harness.Serve(tessera_bin, model, replicas=2, threads=1, name="drain", extra=["--drain-timeout", "60"])
    s.start()
    try:
        s.wait_ready_groups(2, timeout=60)
        got_one = [threading.Event() for _ in range(n)]
        streams = [Stream(s.stub, gen_request(p, max_tokens, ignore_eos=True), timeout=120,
                          on_msg=(lambda i: lambda st, m: st.ids and got_one[i].set())(i))
                   for i, p in enumerate(prompts)]
        threads = [threading.Thread(target=st.run, daemon=True) for st in streams]
        for t in threads:
            t.start()
        for i, e in enumerate(got_one):
            assert e.wait(60), "stream %d got no token: %s" % (i, streams[i].describe())
        s.send_signal(signal.SIGTERM)
        t_term = time.monotonic()

        # A new request is refused while the old ones finish.
        def refused():
            late = Stream(s.stub, gen_request("Hello", 4), timeout=10).run()
            return late.code == grpc.StatusCode.UNAVAILABLE and late
        late = harness.wait_for(refused, 10, interval=0.05, what="a new request to be refused")
        assert "draining" in late.details or "connect" in late.details.lower(), late.describe()

        for t in threads:
            t.join(max(0.0, t_term + 90 - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "streams still open 90 s after SIGTERM"
        for st, ref, p in zip(streams, refs, prompts):
            problems = check_against(st, ref, max_tokens)
            assert not problems, "%r after SIGTERM: %s" % (p[:30], problems)
        rc = s.proc.wait(30)
        assert rc == 0, "serve exited %d after draining" % rc
        print("drained: %d of %d streams finished; serve exited %.1f s after SIGTERM" % (
            n, n, time.monotonic() - t_term))
    finally:
        s.stop()
    assert not s.leftovers, "left running after serve exited: %s" % s.leftovers
    s.cleanup()
