"""`tessera serve` itself: what serve.json says, and a clean stop on SIGTERM and SIGINT (exit 0,
no process, etcd or port left behind)."""

import signal
import time
import urllib.parse
from pathlib import Path

import pytest

import harness


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stops_cleanly(sig, tessera_bin, model, api):
    s = harness.Serve(tessera_bin, model, replicas=1, threads=2, name="lifecycle")
    try:
        s.start()
        info = s.read_json()
        assert info["address"] == s.address, info
        etcd = urllib.parse.urlparse(info["etcd"])
        assert etcd.scheme == "http" and etcd.hostname == "127.0.0.1" and etcd.port, info
        assert harness.port_open("127.0.0.1", etcd.port), "etcd %s not listening" % info["etcd"]
        pids = [("coordinator", info["coordinator_pid"])]
        assert len(info["workers"]) == 1, info
        for w in info["workers"]:
            assert w["id"] and Path(w["log"]).exists(), w
            pids.append((w["id"], w["pid"]))
        for name, pid in pids:
            assert isinstance(pid, int) and harness.pid_alive(pid), "%s pid %r not running" % (name, pid)
        s.wait_ready_groups(1, timeout=60)

        t = time.monotonic()
        rc = s.stop(sig=sig, grace=10)
        took = time.monotonic() - t
        assert rc == 0, "serve exited %s on %s (took %.1f s)\n%s" % (rc, sig.name, took, s.log_tail())
        assert took < 10, "serve took %.1f s to stop" % took
        assert not s.leftovers, "left running after serve exited: %s" % s.leftovers
        for name, pid in pids:
            assert not harness.pid_alive(pid), "%s (pid %d) still running" % (name, pid)
        assert not harness.port_open("127.0.0.1", s.port), "port %d still open" % s.port
        assert not harness.port_open("127.0.0.1", etcd.port), "etcd port %d still open" % etcd.port
    finally:
        s.stop()
        s.cleanup()
