"""Bad configuration is one clear error before anything starts (exit 2, a message naming what is
wrong), never a process that keeps restarting: an etcd nobody answers at, an advertised address
that is not this host's, a layout the model cannot be split into."""

import os
import subprocess
import time

import harness

FOREIGN = "198.18.255.254"  # the benchmark-testing range: no interface of this host has it


def run(argv, timeout=30):
    t0 = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k != "ETCDCTL_ENDPOINTS"}
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                       env=env)
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
        ([t, "worker", "--model", model, "--max-model-len", "9999999"], "--max-model-len 9999999 is over"),
        ([t, "coordinator", "--model", model, "--served-model-name", "a b"], "--served-model-name 'a b'"),
    ]
    # a rank started on its own (--group: a LeaderWorkerSet's pod)
    w = [t, "worker", "--model", model, "--tp", "2", "--group", "g"]
    cases += [
        (w, "--group needs --group-rank"),
        ([t, "worker", "--model", model, "--group-rank", "1"], "--group-rank and --group-size need --group"),
        (w + ["--group-rank", "0"], "give --etcd"),
        (w + ["--group-rank", "0", "--etcd", dead_etcd], "need --device cuda"),
        (w + ["--group-rank", "2", "--etcd", dead_etcd, "--device", "cuda"],
         "--group-rank 2: tp 2 x pp 1 has ranks 0 to 1"),
        (w + ["--group-rank", "0", "--group-size", "3", "--etcd", dead_etcd, "--device", "cuda"],
         "tp 2 x pp 1 needs 2 ranks; the launcher started 3"),
        ([t, "worker", "--model", model, "--tp", "2", "--group", "a/b", "--group-rank", "0", "--etcd", dead_etcd,
          "--device", "cuda"], "--group: rendezvous: bad group name 'a/b'"),
        (w + ["--group-rank", "1", "--etcd", dead_etcd, "--device", "cuda"],
         "etcd %s cannot be reached" % dead_etcd),
    ]
    for argv, want in cases:
        rc, err, took = run(argv)
        assert rc == 2, "%s: exit %d, want 2: %s" % (" ".join(argv[1:]), rc, err)
        first = err.split("\n", 1)[0]
        assert want in first, "%s: the first line %r lacks %r" % (" ".join(argv[1:]), first, want)
        assert took < 10, "%s took %.1f s" % (" ".join(argv[1:]), took)
