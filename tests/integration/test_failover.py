"""Coordinators and etcd killed (DESIGN §1: several coordinators may run; one holds the controller
role through etcd election, all serve).

The first two tests share one etcd and one set of workers (w0, w1, each a one-rank group) started
here by hand, with two coordinators of their own over them:

- test_coordinator_killed_mid_stream: a coordinator SIGKILLed while it streams long requests on
  both workers. The workers notice the broken streams and free them: the surviving coordinator's
  ClusterStatus shows every group idle (all KV blocks free, nothing running) within IDLE_BOUND_S,
  long before the requests could have finished, and requests through it equal `tessera generate`.
- test_controller_failover: SIGKILL of the coordinator holding the controller role (the key
  /tessera/controller, on its lease of 3 s). The other takes the role within FAILOVER_BOUND_S
  (measured and printed), requests through it keep completing with the offline outputs during and
  after the failover, and it acts as the controller: a worker that joins afterwards is assigned a
  group and serves through it.

test_etcd_killed runs `tessera serve --etcd` (a supervisor for the coordinator and the workers)
over an etcd of our own, SIGKILLs etcd with requests in flight, keeps it down past the 3 s lease TTL
and restarts it on the same data dir: each in-flight request completes with the offline outputs or
ends UNAVAILABLE (none hangs: every call has a deadline), the workers re-register (new keys after
the restart), a controller is elected again, and the cluster serves correctly within
RECOVER_BOUND_S of the restart.
"""

import threading
import time

import grpc
import pytest

import harness
from handcluster import PREFIX, Coordinator, Etcd, check_all, logs, start_worker
from harness import PROMPTS, Stream, check_against, gen_request, run_parallel

FAILOVER_BOUND_S = 8.0  # lease TTL 3 s + etcd's expiry check + the 300 ms campaign poll, under load
IDLE_BOUND_S = 10.0
RECOVER_BOUND_S = 40.0


@pytest.fixture(scope="module")
def pool(tessera_bin, model, api, tmp_path_factory):
    """One etcd and two workers (groups g-w0, g-w1, once a controller assigns them)."""
    base = tmp_path_factory.mktemp("failover")
    etcd = Etcd(base).start()
    procs = [etcd.proc]
    try:
        for w in ("w0", "w1"):
            procs.append(start_worker(tessera_bin, model, etcd.url, w, base))
        yield dict(etcd=etcd, base=base, procs=procs, tessera=tessera_bin, model=model)
    finally:
        for p in reversed(procs):
            p.kill()


def test_coordinator_killed_mid_stream(pool, offline):
    etcd, base = pool["etcd"], pool["base"]
    a = Coordinator(pool["tessera"], pool["model"], etcd.url, "coord-x", base)
    b = Coordinator(pool["tessera"], pool["model"], etcd.url, "coord-y", base)
    try:
        for c in (a, b):
            c.wait_groups({"g-w0", "g-w1"}, 90)
        b.wait_idle(10)
        # Two long streams through a, one on each worker (the router takes the least loaded), each
        # far from done when a dies.
        long_n = 2000
        got = [threading.Event() for _ in range(2)]
        streams = [Stream(a.stub, gen_request(PROMPTS[i], long_n, ignore_eos=True), timeout=120,
                          on_msg=(lambda i: lambda st, m: st.ids and got[i].set())(i)) for i in range(2)]
        ts = [threading.Thread(target=s.run, daemon=True) for s in streams]
        for t in ts:
            t.start()
        for i, e in enumerate(got):
            assert e.wait(60), "stream %d got no token: %s" % (i, streams[i].describe())
        before = {g.group: g.stats for g in b.status().groups}
        assert sum(s.n_running for s in before.values()) == 2, before

        a.proc.kill()
        t_kill = time.monotonic()
        st = b.wait_idle(IDLE_BOUND_S)
        idle_s = time.monotonic() - t_kill
        decoded = {g.group: g.stats.decode_tokens - before[g.group].decode_tokens for g in st.groups}
        # Freed, not finished: neither request ran to its 2000 tokens.
        assert all(d < long_n - 100 for d in decoded.values()), decoded
        for t in ts:
            t.join(10)
        assert not any(t.is_alive() for t in ts)
        for s in streams:  # the client's side of a dead coordinator
            assert s.code == grpc.StatusCode.UNAVAILABLE, s.describe()
        print("coordinator killed mid-stream: workers idle %.3f s later (tokens decoded after: %s)" %
              (idle_s, decoded))

        # The workers keep serving the other coordinator, on both groups.
        prompts = PROMPTS[2:6]
        refs = offline.many([dict(prompt=p, max_tokens=8) for p in prompts])
        after = [Stream(b.stub, gen_request(p, 8), timeout=60) for p in prompts]
        run_parallel([s.run for s in after], timeout=90)
        check_all(after, refs, 8, base)
        b.wait_idle(10)
    finally:
        a.close()
        b.close()


def test_controller_failover(pool, offline):
    etcd, base = pool["etcd"], pool["base"]
    # The previous test's coordinators are gone (their lease revoked or expired): wait for no controller.
    harness.wait_for(lambda: etcd.controller() is None, 10, what="no controller left from the last test")
    a = Coordinator(pool["tessera"], pool["model"], etcd.url, "coord-a", base)
    harness.wait_for(lambda: etcd.controller() == "coord-a", 10, what="coord-a elected")
    b = Coordinator(pool["tessera"], pool["model"], etcd.url, "coord-b", base)
    try:
        for c in (a, b):
            c.wait_groups({"g-w0", "g-w1"}, 90)
        assert etcd.controller() == "coord-a"
        prompts = PROMPTS[6:12]
        n = 12
        refs = offline.many([dict(prompt=p, max_tokens=n) for p in prompts])

        # Requests through b all along: before, across and after the failover.
        stop = threading.Event()
        done, lock = [], threading.Lock()

        def client(k):
            i = k
            while not stop.is_set():
                s = Stream(b.stub, gen_request(prompts[i % len(prompts)], n), timeout=60).run()
                with lock:
                    done.append((time.monotonic(), s, refs[i % len(prompts)]))
                i += 2

        clients = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(2)]
        for t in clients:
            t.start()
        harness.wait_for(lambda: len(done) >= 2, 60, what="requests through coord-b before the kill")

        a.proc.kill()
        t_kill = time.monotonic()

        def b_leads():
            return etcd.controller() == "coord-b"

        harness.wait_for(b_leads, FAILOVER_BOUND_S + 5, interval=0.05, what="coord-b to take the controller role")
        failover_s = time.monotonic() - t_kill
        assert failover_s <= FAILOVER_BOUND_S, "coord-b took the role %.2f s after the kill" % failover_s

        # A worker that joins now needs the new controller to be assigned a group.
        w2 = start_worker(pool["tessera"], pool["model"], etcd.url, "w2", base)
        pool["procs"].append(w2)
        b.wait_groups({"g-w0", "g-w1", "g-w2"}, 60)
        harness.wait_for(lambda: sum(1 for _, s, _ in done if s.t_start > t_kill + failover_s) >= 4, 60,
                         what="requests through coord-b after the failover")
        stop.set()
        for t in clients:
            t.join(70)
        assert not any(t.is_alive() for t in clients), "a client thread is still running"
        for _, s, ref in done:
            problems = check_against(s, ref, n)
            assert not problems, "%s\n%s" % (problems, logs(base))
        # the new group serves too (least-loaded routing: an idle group takes the next request)
        b.wait_idle(10)
        more = [Stream(b.stub, gen_request(p, n), timeout=60) for p in prompts[:3]]
        run_parallel([s.run for s in more], timeout=90)
        check_all(more, refs[:3], n, base)
        spanning = sum(1 for _, s, _ in done if s.t_start < t_kill < s.t_end)
        print("controller failover: coord-b took the role %.2f s after SIGKILL of coord-a (bound %.0f s); "
              "%d requests through coord-b matched offline, %d of them spanning the kill" %
              (failover_s, FAILOVER_BOUND_S, len(done), spanning))
    finally:
        stop.set()
        a.close()
        b.close()


def test_etcd_killed(tessera_bin, model, api, offline, tmp_path):
    etcd = Etcd(tmp_path).start()
    s = harness.Serve(tessera_bin, model, replicas=2, threads=1, name="etcd-killed",
                      extra=["--etcd", etcd.url, "--kv-blocks", "256"])
    try:
        s.start()
        s.wait_ready_groups(2, timeout=60)
        # The long ones are still streaming when the workers give their leases up (~3 s after the
        # kill) and exit to re-register: those end UNAVAILABLE (a token was streamed: no retry).
        long_n, n = 300, 8
        long_prompts, prompts = PROMPTS[0:4], PROMPTS[4:8]
        refs = offline.many([dict(prompt=p, max_tokens=n) for p in prompts])
        first = [Stream(s.stub, gen_request(p, n), timeout=60) for p in prompts]
        run_parallel([x.run for x in first], timeout=90)
        check_all(first, refs, n, tmp_path)
        workers_before, rev_before = etcd.get(PREFIX + "/workers/")
        assert len(workers_before) == 2, workers_before

        got = [threading.Event() for _ in long_prompts]
        flight = [Stream(s.stub, gen_request(p, long_n, ignore_eos=True), timeout=60,
                         on_msg=(lambda i: lambda st, m: st.ids and got[i].set())(i))
                  for i, p in enumerate(long_prompts)]
        ts = [threading.Thread(target=x.run, daemon=True) for x in flight]
        for t in ts:
            t.start()
        for i, e in enumerate(got):
            assert e.wait(60), "stream %d got no token: %s" % (i, flight[i].describe())

        etcd.kill()
        t_kill = time.monotonic()
        # Down past the 3 s lease TTL: every keepalive gives up, so the workers must re-register.
        time.sleep(4.0)
        during = Stream(s.stub, gen_request(prompts[0], n), timeout=20)
        run_parallel([during.run], timeout=30)  # a join with a timeout too: the test must not hang
        etcd.start()
        t_up = time.monotonic()
        for t in ts:
            t.join(max(0.0, t_kill + 70 - time.monotonic()))
        assert not any(t.is_alive() for t in ts), "streams still open 70 s after etcd was killed"
        ended = []
        for x, p in zip(flight, long_prompts):
            if x.code is not None:
                assert x.code == grpc.StatusCode.UNAVAILABLE, x.describe()
                ended.append("UNAVAILABLE")
            else:
                problems = check_against(x, offline(prompt=p, max_tokens=long_n, ignore_eos=True), long_n)
                assert not problems, problems
                ended.append(x.finish)
        # A request while etcd was down: the groups still serve (routing does not need etcd) or,
        # if its worker had given up its lease already, UNAVAILABLE.
        if during.code is not None:
            assert during.code == grpc.StatusCode.UNAVAILABLE, during.describe()
        else:
            assert not check_against(during, refs[0], n)

        def serving_again():
            if len(s.status().groups) != 2 or not all(g.ready for g in s.status().groups):
                return False
            kvs, _ = etcd.get(PREFIX + "/workers/")
            if len(kvs) != 2 or any(int(kv["mod_revision"]) <= rev_before for kv in kvs.values()):
                return False  # not re-registered yet
            ctl = etcd.get(PREFIX + "/controller")[0].get(PREFIX + "/controller")
            if not ctl or int(ctl["create_revision"]) <= rev_before:
                return False  # no controller elected since the restart
            again = [Stream(s.stub, gen_request(p, n), timeout=30) for p in prompts]
            run_parallel([x.run for x in again], timeout=60)
            return all(not check_against(x, r, n) for x, r in zip(again, refs))

        try:
            harness.wait_for(serving_again, RECOVER_BOUND_S, interval=0.5, what="the cluster to serve correctly again")
        except AssertionError as e:
            raise AssertionError("%s\n%s\n%s" % (e, s.log_tail(), harness.tail(tmp_path / "etcd.log"))) from None
        recover_s = time.monotonic() - t_up
        final = [Stream(s.stub, gen_request(p, n), timeout=30) for p in prompts]
        run_parallel([x.run for x in final], timeout=60)
        check_all(final, refs, n, tmp_path)
        print("etcd killed: in flight %s; request while down: %s; workers re-registered and serving "
              "correctly %.1f s after etcd restarted (bound %.0f s)" %
              (ended, during.code or during.finish, recover_s, RECOVER_BOUND_S))
    finally:
        s.stop()
        s.cleanup()
        etcd.kill()
