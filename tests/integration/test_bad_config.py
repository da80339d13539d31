"""Bad configuration is one clear error before anything starts (exit 2, a message naming what is
wrong), never a process that keeps restarting: an etcd nobody answers at, an advertised address
that is not this host's, a layout the model cannot be split into."""

import subprocess
import time

import harness

FOREIGN = "198.18.255.254"  # the benchmark-testing range: no interface of this host has it


def run(argv, timeout=30):
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return r.returncode, r.stderr, time.monotonic() - t0


def test_bad_config(tessera_bin, model, tmp_path):
    t = str(tessera_bin)
    dead_etcd = "http://127.0.0.1:%d" % harness.free_port()  # bound and closed: nobody answers
    cases = [
        ([t, "serve", "--model", model, "--etcd", dead_etcd, "--dir", str(tmp_path / "s1")],
         "etcd %s cannot be reached" % dead_etcd),
        ([t, "coordinator", "--model", model, "--etcd", dead_etcd], "etcd %s cannot be reached" % dead_etcd),
        ([t, "worker", "--model", model, "--etcd", dead_etcd], "etcd %s cannot be reached" % dead_etcd),
        ([t, "serve", "--model", model, "--advertise-address", FOREIGN, "--dir", str(tmp_path / "s2")],
         "--advertise-address %s is not an address of this host" % FOREIGN),
        ([t, "worker", "--model", model, "--advertise-address", "0.0.0.0"], "is a wildcard"),
        ([t, "serve", "--model", model, "--tp", "2", "--dir", str(tmp_path / "s3")], "tp=2 does not divide"),
        ([t, "coordinator", "--model", model], "--etcd (or ETCDCTL_ENDPOINTS) is required"),
    ]
    for argv, want in cases:
        rc, err, took = run(argv)
        assert rc == 2, "%s: exit %d, want 2: %s" % (" ".join(argv[1:]), rc, err)
        first = err.split("\n", 1)[0]
        assert want in first, "%s: the first line %r lacks %r" % (" ".join(argv[1:]), first, want)
        assert took < 10, "%s took %.1f s" % (" ".join(argv[1:]), took)
