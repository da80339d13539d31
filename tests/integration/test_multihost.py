"""One cluster across hosts: hosts are network namespaces, each with its own address, routed
through a router namespace (a Linux bridge does not forward here: ../shared/notes/cluster-ci.md),
with no loopback between them. Addresses come from 198.18.0.0/15, the range set aside for network
benchmarks, and exist only inside this test's namespaces.

  host A  198.18.1.1   etcd, the coordinator (groups of tp 3)
  host B  198.18.2.1   ranks 0 (the leader) and 1 of replica g1, and replica g2 (all three ranks)
  host C  198.18.3.1   rank 2 of replica g1
  client  198.18.4.1   this test, in the root namespace, outside all three

Replica g1 is one MPI world across B and C (mpirun with a hostfile and an rsh agent that enters
the other namespace; TCP between them): one tensor-parallel group whose every layer's all-reduces
cross the hosts. (The issue asks for tp 2; the default model's 9 heads and 3 KV heads divide by 3,
not 2.) Checks: 16 concurrent greedy prompts equal `tessera generate` on one process; no tessera process listens on loopback only; SIGKILL of the rank on C
ends the requests on g1 within 10 s (UNAVAILABLE, or completed with the same tokens on g2, where
request migration resumes them), none hangs, and once g1 is started again the cluster serves both replicas within 30 s."""

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest

import harness
from harness import PROMPTS, Stream, check_against, gen_request, run_parallel

HOSTS = {"a": 1, "b": 2, "c": 3}
NET = "198.18.0.0/16"
SUFFIX = "%d" % (os.getpid() % 100000)


def sh(*cmd, check=True):
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise RuntimeError("%s: %s%s" % (" ".join(cmd), r.stdout, r.stderr))
    return r.stdout


def ns(h):
    return "tsr%s-%s" % (SUFFIX, h)


class Hosts:
    """The namespaces, their links and routes; removed on exit."""

    def __enter__(self):
        self.made = []
        router = ns("r")
        sh("ip", "netns", "add", router)
        self.made.append(router)
        sh("ip", "netns", "exec", router, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for h, n in list(HOSTS.items()) + [("client", 4)]:
            inside, outside = "v%s%s" % (SUFFIX, h[0] if h != "client" else "x"), "r%s%s" % (
                SUFFIX, h[0] if h != "client" else "x")
            if h != "client":
                sh("ip", "netns", "add", ns(h))
                self.made.append(ns(h))
                sh("ip", "link", "add", inside, "netns", ns(h), "type", "veth", "peer", "name", outside,
                   "netns", router)
                run_in = ["ip", "netns", "exec", ns(h)]
            else:  # the client end stays in the root namespace
                sh("ip", "link", "add", inside, "type", "veth", "peer", "name", outside, "netns", router)
                self.client_link = inside
                run_in = []
            sh(*run_in, "ip", "addr", "add", "198.18.%d.1/24" % n, "dev", inside)
            sh(*run_in, "ip", "link", "set", inside, "up")
            if h != "client":
                sh(*run_in, "ip", "link", "set", "lo", "up")
            sh("ip", "netns", "exec", router, "ip", "addr", "add", "198.18.%d.254/24" % n, "dev", outside)
            sh("ip", "netns", "exec", router, "ip", "link", "set", outside, "up")
            sh(*run_in, "ip", "route", "add", NET, "via", "198.18.%d.254" % n)
        return self

    def __exit__(self, *exc):
        for p in self.pids():
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        sh("ip", "link", "del", self.client_link, check=False)
        for n in reversed(self.made):
            sh("ip", "netns", "del", n, check=False)

    def pids(self, h=None):
        out = []
        for name in ([ns(h)] if h else self.made):
            out += [int(p) for p in sh("ip", "netns", "pids", name, check=False).split()]
        return out


def addr(h):
    return "198.18.%d.1" % HOSTS[h]


@pytest.fixture(scope="module")
def hosts():
    if os.geteuid() != 0:
        pytest.skip("skipped: network namespaces need root")
    with Hosts() as hs:
        yield hs


def in_ns(h, argv, log, env=None):
    f = open(log, "ab")
    return subprocess.Popen(["ip", "netns", "exec", ns(h)] + argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                            env=env, start_new_session=True)


def test_multihost(hosts, tessera_bin, model, api, offline, tmp_path):
    tessera = str(tessera_bin)
    etcd_url = "http://%s:2379" % addr("a")
    procs = []
    # etcd and the coordinator on A
    procs.append(in_ns("a", ["/usr/bin/etcd", "--name", "a", "--data-dir", str(tmp_path / "etcd"),
                             "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
                             "--listen-peer-urls", "http://%s:2380" % addr("a"),
                             "--initial-advertise-peer-urls", "http://%s:2380" % addr("a"),
                             "--initial-cluster", "a=http://%s:2380" % addr("a")], tmp_path / "etcd.log"))
    procs.append(in_ns("a", [tessera, "coordinator", "--etcd", etcd_url, "--model", model, "--host", "0.0.0.0",
                             "--port", "50051", "--tp", "3", "--drain-timeout", "0"], tmp_path / "coordinator.log"))
    # g1: one MPI world over B and C
    agent = tmp_path / "netns-rsh"
    agent.write_text("#!/bin/sh\n# stands in for ssh: skips options, enters the named host's namespace\n"
                     "while [ \"${1#-}\" != \"$1\" ]; do shift; done\nhost=$1; shift\n"
                     "exec ip netns exec \"%s$host\" sh -c \"$*\"\n" % ("tsr%s-" % SUFFIX))
    agent.chmod(0o755)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("b slots=2\nc slots=1\n")
    mpi = ["mpirun", "-np", "3", "--hostfile", str(hostfile), "--allow-run-as-root", "--bind-to", "none",
           "--mca", "plm_rsh_agent", str(agent), "--mca", "btl", "self,tcp",
           "--mca", "btl_tcp_if_include", NET, "--mca", "oob_tcp_if_include", NET,
           # every daemon reports to mpirun itself: once in CI, the default tree routing sent a
           # message through host b's daemon before it was up ("ORTE does not know how to route")
           "--mca", "routed", "direct",
           tessera, "worker", "--etcd", etcd_url, "--model", model, "--id", "g1", "--tp", "3",
           "--threads", "1", "--host", "0.0.0.0", "--kv-blocks", "256"]

    def start_g1():
        return in_ns("b", mpi, tmp_path / "g1.log")

    # mpirun across the namespaces now and then fails before any rank runs (its daemons' TCP
    # connections back: "ORTE does not know how to route", "unable to complete a TCP
    # connection", once in 10 CI runs); a supervisor starts it again, and so does this test while
    # it waits for the group, at most twice, saying so
    g1 = start_g1()
    launches = [0]

    def supervise():
        nonlocal g1
        if g1.poll() is not None and launches[0] < 2:
            launches[0] += 1
            print("g1's mpirun exited %d while starting; started again (%d)" % (g1.returncode, launches[0]))
            g1 = start_g1()
    procs.append(in_ns("b", [tessera, "worker", "--etcd", etcd_url, "--model", model, "--id", "g2", "--tp", "3",
                             "--threads", "1", "--host", "0.0.0.0", "--kv-blocks", "256"], tmp_path / "g2.log"))
    logs = lambda: "\n".join("---- %s\n%s" % (p.name, harness.tail(p, 30)) for p in sorted(tmp_path.glob("*.log")))
    try:
        channel = grpc.insecure_channel("%s:50051" % addr("a"))
        stub = api.rpc.InferenceStub(channel)

        def groups():
            st = stub.ClusterStatus(api.pb.ClusterStatusRequest(), timeout=5)
            return {g.group: g.address for g in st.groups if g.ready}

        try:
            ready = harness.wait_for(lambda: supervise() or (len(groups()) == 2 and groups()), 120,
                                     interval=0.5, what="2 ready groups")
        except AssertionError:
            raise AssertionError("cluster never became ready\n" + logs()) from None
        # each leader advertises its host's address, never loopback or a wildcard
        assert {a.rsplit(":", 1)[0] for a in ready.values()} == {addr("b")}, ready

        # 16 concurrent prompts equal one process's answers
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(16)]
        refs = offline.many([dict(prompt=p, max_tokens=8) for p in prompts])
        streams = [Stream(stub, gen_request(p, 8), timeout=120) for p in prompts]
        run_parallel([s.run for s in streams], timeout=180)
        for s, ref, p in zip(streams, refs, prompts):
            problems = check_against(s, ref, 8)
            assert not problems, "%r: %s\n%s" % (p[:30], problems, logs())

        # no tessera listener on loopback only, on any host
        for h in HOSTS:
            out = sh("ip", "netns", "exec", ns(h), "ss", "-Hltnp")
            for line in out.splitlines():
                if "tessera" in line:
                    local = line.split()[3]
                    assert not local.startswith("127.") and not local.startswith("[::1]"), \
                        "host %s: tessera listens on loopback only: %s" % (h, line)

        # SIGKILL of g1's rank on C, with requests in flight on both replicas
        long_n = 64
        long_refs = offline.many([dict(prompt=p, max_tokens=long_n, ignore_eos=True) for p in PROMPTS[:6]])
        got = [threading.Event() for _ in range(6)]
        flight = [Stream(stub, gen_request(p, long_n, ignore_eos=True), timeout=120,
                         on_msg=(lambda i: lambda st, m: st.ids and got[i].set())(i)) for i, p in enumerate(PROMPTS[:6])]
        ts = [threading.Thread(target=s.run, daemon=True) for s in flight]
        for t in ts:
            t.start()
        for i, e in enumerate(got):
            assert e.wait(90), "stream %d got no token: %s" % (i, flight[i].describe())
        victims = [p for p in hosts.pids("c") if "worker" in Path("/proc/%d/cmdline" % p).read_bytes().decode(errors="replace")]
        assert victims, "no tessera worker on host C: %s" % sh("ip", "netns", "pids", ns("c"))
        for p in victims:
            os.kill(p, signal.SIGKILL)
        t_kill = time.monotonic()
        for t in ts:
            t.join(max(0.0, t_kill + 12 - time.monotonic()))
        assert not any(t.is_alive() for t in ts), "streams still open 12 s after the rank on C died"
        for i, s in enumerate(flight):
            if s.code is not None:
                assert s.code == grpc.StatusCode.UNAVAILABLE, s.describe()
                assert s.t_end - t_kill <= 10, "stream %d ended %.1f s after the kill" % (i, s.t_end - t_kill)
            else:
                problems = check_against(s, long_refs[i], long_n)
                assert not problems, problems
        print("rank on C killed: %d of 6 streams UNAVAILABLE, the rest completed" % sum(s.code is not None for s in flight))

        # the group ends cleanly (mpirun takes its other rank down); started again, it serves
        g1.wait(30)
        g1 = start_g1()
        launches[0] = 0
        t0 = time.monotonic()
        harness.wait_for(lambda: supervise() or len(groups()) == 2, 30, interval=0.5,
                         what="both replicas ready again")
        again = [Stream(stub, gen_request(p, 8), timeout=60) for p in prompts[:4]]
        run_parallel([s.run for s in again], timeout=120)
        for s, ref in zip(again, refs[:4]):
            assert not check_against(s, ref, 8)
        print("serving both replicas again %.1f s after g1 was started again" % (time.monotonic() - t0))
        channel.close()
    finally:
        for p in procs + [g1]:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except OSError:
                pass
        for p in procs + [g1]:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
