"""A cluster started process by process (no `tessera serve` supervising it), for tests that kill
and restart its parts: etcd, coordinators and workers, each in a session of its own, logs in one
folder. A killed process stays dead until the test starts it again."""

import base64
import json
import os
import signal
import subprocess

import grpc

import harness
from harness import check_against

PREFIX = "/tessera"


class Proc:
    """One process of ours with its log, in a session of its own; SIGKILLed at the end."""

    def __init__(self, name, argv, log):
        self.name, self.argv, self.log = name, [str(a) for a in argv], log
        with open(log, "ab") as f:
            self.p = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                      start_new_session=True, cwd=str(harness.REPO))

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p.poll() is None

    def kill(self, sig=signal.SIGKILL):
        """Sends sig to its process group and waits up to 10 s, then SIGKILLs it."""
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, sig)
            except OSError:
                pass
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            if sig != signal.SIGKILL:
                self.kill()


class Etcd:
    """A one-member etcd on loopback that can be SIGKILLed and started again on its data dir."""

    def __init__(self, base):
        self.base = base
        self.data = base / "etcd-data"
        self.client, self.peer = harness.free_port(), harness.free_port()
        self.url = "http://127.0.0.1:%d" % self.client
        self.proc = None

    def start(self, timeout=30):
        purl = "http://127.0.0.1:%d" % self.peer
        self.proc = Proc("etcd", ["etcd", "--name", "t", "--data-dir", self.data, "--listen-client-urls", self.url,
                                  "--advertise-client-urls", self.url, "--listen-peer-urls", purl,
                                  "--initial-advertise-peer-urls", purl, "--initial-cluster", "t=" + purl],
                         self.base / "etcd.log")
        harness.wait_for(lambda: self.ctl("endpoint", "health", check=False) is not None, timeout, interval=0.1,
                         what="etcd at %s healthy" % self.url)
        return self

    def ctl(self, *args, check=True):
        """etcdctl's stdout, or None (check=False) when it failed."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
        r = subprocess.run(["etcdctl", "--endpoints", self.url, "--command-timeout=2s"] + list(args),
                           capture_output=True, text=True, timeout=10, env=env)
        if r.returncode != 0:
            if check:
                raise AssertionError("etcdctl %s: %s" % (" ".join(args), r.stderr))
            return None
        return r.stdout

    def get(self, key):
        """({key: kv}, revision): etcdctl's JSON, base64 decoded, for key or, ending in "/", its prefix."""
        out = self.ctl("get", key, "-w", "json", *(["--prefix"] if key.endswith("/") else []))
        j = json.loads(out)
        return {base64.b64decode(kv["key"]).decode(): dict(kv, value=base64.b64decode(kv["value"]).decode())
                for kv in j.get("kvs", [])}, int(j["header"]["revision"])

    def controller(self):
        kvs, _ = self.get(PREFIX + "/controller")
        kv = kvs.get(PREFIX + "/controller")
        return kv["value"] if kv else None

    def kill(self):
        self.proc.kill()


class Coordinator:
    def __init__(self, tessera, model, etcd_url, cid, base, extra=()):
        self.id, self.port = cid, harness.free_port()
        self.address = "127.0.0.1:%d" % self.port
        self.log = base / ("%s.log" % cid)
        self.proc = Proc(cid, [tessera, "coordinator", "--etcd", etcd_url, "--model", model, "--port", self.port,
                               "--id", cid, "--drain-timeout", "0"] + list(extra), self.log)
        self.channel = grpc.insecure_channel(self.address)
        try:
            grpc.channel_ready_future(self.channel).result(timeout=30)
        except grpc.FutureTimeoutError:
            raise AssertionError("coordinator %s not serving in 30 s\n%s" % (cid, harness.tail(self.log))) from None
        self.stub = harness.api().rpc.InferenceStub(self.channel)

    def status(self, timeout=5):
        return self.stub.ClusterStatus(harness.api().pb.ClusterStatusRequest(), timeout=timeout)

    def ready_groups(self):
        return {g.group for g in self.status().groups if g.ready}

    def wait_groups(self, groups, timeout):
        return harness.wait_for(lambda: groups <= self.ready_groups(), timeout, interval=0.2,
                                what="%s ready through %s" % (sorted(groups), self.id))

    def wait_idle(self, timeout):
        """Every group has all its KV blocks free and nothing running or waiting; the status."""

        def idle():
            st = self.status()
            for g in st.groups:
                s = g.stats
                if not g.HasField("stats") or s.n_free_blocks != s.n_blocks or s.n_running or s.n_waiting:
                    return False
            return st.groups and st

        try:
            return harness.wait_for(idle, timeout, interval=0.1, what="all groups idle through %s" % self.id)
        except AssertionError as e:
            raise AssertionError("%s; last ClusterStatus:\n%s" % (e, self.status())) from None

    def close(self):
        """SIGTERM: a coordinator that stops hands the controller role over at once."""
        self.channel.close()
        self.proc.kill(signal.SIGTERM)


def start_worker(tessera, model, etcd_url, wid, base, extra=()):
    return Proc(wid, [tessera, "worker", "--etcd", etcd_url, "--model", model, "--id", wid, "--threads", "1",
                      "--kv-blocks", "256"] + list(extra), base / ("%s.log" % wid))


def logs(base):
    return "\n".join("---- %s\n%s" % (p.name, harness.tail(p, 25)) for p in sorted(base.glob("*.log")))


def check_all(streams, refs, n, base):
    for s, ref in zip(streams, refs):
        problems = check_against(s, ref, n)
        assert not problems, "%s\n%s" % (problems, logs(base))
