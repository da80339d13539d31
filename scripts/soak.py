#!/usr/bin/python3
"""Chaos soak: a real local cluster under load, with faults injected at random, and a ledger.

The cluster: a 3-member etcd, 2 coordinators and 3 single-rank workers (3 replicas), each a
process this script starts and supervises (a process that exits is started again). Clients send
greedy requests to both coordinators all the time. Faults, one at a time, every kind at least once:

  kill_worker          SIGKILL of a worker
  stop_worker          SIGSTOP of a worker for longer than its lease, then SIGCONT (a hang)
  kill_coordinator     SIGKILL of a coordinator
  kill_etcd_leader     SIGKILL of the etcd member that leads, started again a few seconds later
  restart_worker_fast  SIGKILL of a worker and a new one with the same id at once, while the old
                       one's lease is still alive

What must hold (exit 1 otherwise):
  - the ledger balances: sent = completed + errors, by code;
  - no hung stream: every request ends by its deadline (DEADLINE_EXCEEDED counts as hung);
  - no wrong answer: every completed greedy answer equals offline `tessera generate`;
  - after the faults stop, all 3 replicas serve again, through both coordinators, and every KV
    pool is back to full when idle;
  - no process is left behind once the cluster is stopped.

    scripts/soak.py                          # what CI runs (tests/integration/test_soak.py): 1 min;
                                             # faults go on past it until each kind has run once
    scripts/soak.py --minutes 30 --json ledger.json

Run with Debian's python3 (python3-grpcio). Everything listens on 127.0.0.1.
"""

import argparse
import collections
import json
import os
import re
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
import grpc  # noqa: E402

import harness  # noqa: E402
from harness import Stream, gen_request  # noqa: E402

FAULTS = ["kill_worker", "stop_worker", "kill_coordinator", "kill_etcd_leader", "restart_worker_fast"]
PROMPTS = harness.PROMPTS[:10]
MAX_TOKENS = 24
DEADLINE_S = 40  # per request; a stream open past it is hung
TTL_S = 3


class Proc:
    """One supervised process: started again `delay` seconds after it exits, unless held."""

    def __init__(self, name, argv, log):
        self.name, self.argv, self.log = name, argv, log
        self.p = None
        self.held = False
        self.restart_at = 0.0
        self.starts = 0

    def start(self):
        with open(self.log, "ab") as f:
            self.p = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f, cwd=str(REPO))
        self.starts += 1

    @property
    def pid(self):
        return self.p.pid if self.p else None

    def alive(self):
        return self.p is not None and self.p.poll() is None

    def signal(self, sig):
        if self.alive():
            try:
                os.kill(self.p.pid, sig)
            except ProcessLookupError:
                pass


class Cluster:
    def __init__(self, tessera, model, out):
        self.tessera, self.model, self.out = tessera, model, Path(out)
        self.lock = threading.Lock()
        ports = [harness.free_port() for _ in range(6)]
        self.etcd_urls = ["http://127.0.0.1:%d" % p for p in ports[:3]]
        peers = ["http://127.0.0.1:%d" % p for p in ports[3:]]
        initial = ",".join("e%d=%s" % (i, peers[i]) for i in range(3))
        self.procs = {}
        for i in range(3):
            self.procs["e%d" % i] = Proc("e%d" % i, [
                "/usr/bin/etcd", "--name", "e%d" % i, "--data-dir", str(self.out / ("etcd%d" % i)),
                "--listen-client-urls", self.etcd_urls[i], "--advertise-client-urls", self.etcd_urls[i],
                "--listen-peer-urls", peers[i], "--initial-advertise-peer-urls", peers[i],
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", "tessera-soak", "--logger", "zap", "--log-outputs", "stderr"],
                str(self.out / ("etcd%d.log" % i)))
        eps = ",".join(self.etcd_urls)
        self.coord_addrs = []
        for i in range(2):
            addr = "127.0.0.1:%d" % harness.free_port()
            self.coord_addrs.append(addr)
            self.procs["c%d" % i] = Proc("c%d" % i, [
                tessera, "coordinator", "--etcd", eps, "--model", model, "--port", addr.split(":")[1], "--id", "c%d" % i,
                "--drain-timeout", "5"], str(self.out / ("coordinator%d.log" % i)))
        for i in range(3):
            self.procs["w%d" % i] = Proc("w%d" % i, [
                tessera, "worker", "--etcd", eps, "--model", model, "--id", "w%d" % i, "--threads", "1",
                "--kv-blocks", "256", "--ttl", str(TTL_S)], str(self.out / ("worker%d.log" % i)))
        self.stopping = False
        self.sup = threading.Thread(target=self.supervise, daemon=True)

    def start(self):
        for name in ("e0", "e1", "e2"):
            self.procs[name].start()
        for name in ("c0", "c1", "w0", "w1", "w2"):
            self.procs[name].start()
        self.sup.start()

    def supervise(self):
        while not self.stopping:
            with self.lock:
                for pr in self.procs.values():
                    if pr.held or pr.alive():
                        continue
                    if pr.restart_at == 0.0:
                        pr.restart_at = time.monotonic() + 1.0
                    elif time.monotonic() >= pr.restart_at:
                        pr.restart_at = 0.0
                        pr.start()
            time.sleep(0.1)

    def etcd_leader(self):
        """The name of the member that leads now, or None."""
        for i, url in enumerate(self.etcd_urls):
            if not self.procs["e%d" % i].alive():
                continue
            try:
                req = urllib.request.Request(url + "/v3/maintenance/status", data=b"{}", method="POST")
                st = json.loads(urllib.request.urlopen(req, timeout=2).read())
                if st.get("leader") and st.get("leader") == st.get("header", {}).get("member_id"):
                    return "e%d" % i
            except Exception:  # noqa: BLE001 - that member is down or electing
                continue
        return None

    def stop(self):
        """SIGTERM to everything (coordinators and workers first), SIGKILL after 15 s."""
        self.stopping = True
        self.sup.join(5)
        order = [n for n in self.procs if not n.startswith("e")] + ["e0", "e1", "e2"]
        for group in (order[:-3], order[-3:]):
            for n in group:
                self.procs[n].signal(signal.SIGCONT)
                self.procs[n].signal(signal.SIGTERM)
            deadline = time.monotonic() + 15
            for n in group:
                pr = self.procs[n]
                if pr.p is None:
                    continue
                try:
                    pr.p.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    print("soak: %s did not stop on SIGTERM in 15 s; killing it" % n, flush=True)
                    pr.p.kill()
                    pr.p.wait(10)


def leftovers(markers):
    """Processes still running whose command line holds one of markers (this run's folder, its
    etcd endpoints)."""
    mine = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(m in cmd for m in markers) and harness.pid_alive(int(d.name)):
            mine.append("%s: %s" % (d.name, cmd[:120]))
    return mine


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--tessera", default=str(REPO / "build" / "tessera"))
    ap.add_argument("--model", default=str(harness.DEFAULT_MODEL))
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fault-every", type=float, default=10.0, help="mean seconds between faults")
    ap.add_argument("--json", help="write the ledger here")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    api = harness.load_api()
    out = Path(tempfile.mkdtemp(prefix="tessera-soak-"))
    print("soak: %.1f min, logs in %s" % (args.minutes, out), flush=True)

    # The references, from offline generate: no cluster involved.
    offline = harness.Offline(args.tessera, args.model)
    refs = dict(zip(PROMPTS, offline.many([dict(prompt=p, max_tokens=MAX_TOKENS) for p in PROMPTS])))

    cl = Cluster(args.tessera, args.model, out)
    cl.start()
    ledger = collections.Counter()
    wrong, hung, faults_done = [], [], collections.Counter()
    stop_load = threading.Event()
    led_lock = threading.Lock()
    ok = True
    try:
        channels = [grpc.insecure_channel(a) for a in cl.coord_addrs]
        stubs = [api.rpc.InferenceStub(ch) for ch in channels]

        def ready_groups(stub):
            try:
                st = stub.ClusterStatus(api.pb.ClusterStatusRequest(), timeout=5)
                return len([g for g in st.groups if g.ready])
            except grpc.RpcError:
                return 0

        harness.wait_for(lambda: all(ready_groups(s) == 3 for s in stubs), 120, interval=0.5,
                         what="3 ready groups on both coordinators")
        print("soak: cluster ready", flush=True)

        def client(k):
            crng = random.Random(args.seed * 1000 + k)
            while not stop_load.is_set():
                p = crng.choice(PROMPTS)
                st = Stream(stubs[crng.randrange(2)], gen_request(p, MAX_TOKENS), timeout=DEADLINE_S)
                st.run()
                with led_lock:
                    ledger["sent"] += 1
                    if st.t_end - st.t_start > DEADLINE_S + 5 or st.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                        hung.append(st.describe()[-300:])
                    if st.code is None and st.error is None:
                        problems = harness.check_against(st, refs[p], MAX_TOKENS)
                        if problems:
                            wrong.append((p[:40], problems))
                        ledger["completed"] += 1
                    elif st.code is not None:
                        ledger["error " + st.code.name] += 1
                    else:
                        ledger["error client: %s" % type(st.error).__name__] += 1
                if st.code is not None:
                    time.sleep(0.2)  # a client backs off a little after an error

        clients = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(args.clients)]
        for t in clients:
            t.start()

        # Faults: each kind once, in random order, then at random; one at a time.
        t_end = time.monotonic() + args.minutes * 60
        plan = FAULTS[:]
        rng.shuffle(plan)
        while time.monotonic() < t_end or plan:
            time.sleep(rng.uniform(0.5, 1.5) * args.fault_every)
            kind = plan.pop() if plan else rng.choice(FAULTS)
            what = inject(cl, kind, rng)
            faults_done[kind] += 1
            print("soak: %6.1f s  %-20s %s" % (args.minutes * 60 - (t_end - time.monotonic()), kind, what), flush=True)
        print("soak: faults over; waiting for the cluster to heal", flush=True)

        # Healed: 3 replicas on both coordinators, while the clients go on.
        harness.wait_for(lambda: all(ready_groups(s) == 3 for s in stubs), 90, interval=0.5,
                         what="3 ready groups on both coordinators after the faults")
        time.sleep(5)
        stop_load.set()
        for t in clients:
            t.join(DEADLINE_S + 10)
        if any(t.is_alive() for t in clients):
            hung.append("a client thread still running %d s after the load stopped" % (DEADLINE_S + 10))

        # Idle: every KV pool full again.
        def idle():
            st = stubs[0].ClusterStatus(api.pb.ClusterStatusRequest(), timeout=5)
            s = [g.stats for g in st.groups if g.HasField("stats")]
            return len(s) == 3 and all(x.n_free_blocks == x.n_blocks and x.n_running == 0 for x in s) and st
        try:
            harness.wait_for(idle, 30, interval=0.5, what="every KV pool full")
            kv_full = True
        except AssertionError as e:
            kv_full = False
            print("soak: %s\n%s" % (e, stubs[0].ClusterStatus(api.pb.ClusterStatusRequest(), timeout=5)))
        for ch in channels:
            ch.close()
    finally:
        stop_load.set()
        cl.stop()
    time.sleep(1)
    left = leftovers([str(out), ",".join(cl.etcd_urls)])
    for line in left:
        os.kill(int(line.split(":")[0]), signal.SIGKILL)

    # the workers logged their periodic stats lines (RFC 3339 time, component, pid) under load; a
    # worker the faults restart every few seconds may never run the 10 s a line needs
    stats_re = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z worker\[\d+\] info: stats: ([\d.]+) tok/s generated, "
                          r"[\d.]+ tok/s prompt; \d+ running, \d+ waiting; KV cache [\d.]+% used", re.M)
    stats_ok = any(float(m.group(1)) > 0 for i in range(3) for m in stats_re.finditer(
        Path(out, "worker%d.log" % i).read_text(errors="replace")))
    errors = sum(v for k, v in ledger.items() if k.startswith("error"))
    balanced = ledger["sent"] == ledger["completed"] + errors
    faults_ok = all(faults_done[k] >= 1 for k in FAULTS)
    checks = [("ledger balances (sent = completed + errors)", balanced),
              ("no hung stream", not hung), ("no wrong answer", not wrong),
              ("every fault kind injected", faults_ok), ("KV pools full when idle", kv_full),
              ("no process left behind", not left), ("workers logged stats lines", stats_ok),
              ("most requests completed", ledger["completed"] >= 0.5 * ledger["sent"] > 0)]
    print("\nsoak ledger (%.1f min, %d clients, seed %d)" % (args.minutes, args.clients, args.seed))
    for k in sorted(ledger):
        print("  %-36s %6d" % (k, ledger[k]))
    print("  faults: %s" % ", ".join("%s %d" % (k, faults_done[k]) for k in FAULTS))
    print("  restarts: %s" % ", ".join("%s %d" % (n, pr.starts - 1) for n, pr in cl.procs.items()))
    for name, good in checks:
        print("  %-50s %s" % (name, "ok" if good else "FAILED"))
        ok &= good
    for w in wrong[:5]:
        print("  wrong: %s" % (w,))
    for h in hung[:5]:
        print("  hung: %s" % h)
    for line in left:
        print("  left running: %s" % line)
    if args.json:
        Path(args.json).write_text(json.dumps({"minutes": args.minutes, "ledger": ledger, "faults": faults_done,
                                               "checks": dict(checks)}, indent=2))
    if ok and not os.environ.get("TESSERA_KEEP_LOGS"):
        subprocess.run(["rm", "-rf", str(out)])
    print("soak: %s" % ("passed" if ok else "FAILED (logs in %s)" % out))
    return 0 if ok else 1


def inject(cl, kind, rng):
    """Applies one fault; returns a line saying what it hit."""
    if kind in ("kill_worker", "stop_worker", "restart_worker_fast"):
        live = [n for n in ("w0", "w1", "w2") if cl.procs[n].alive()]
        if not live:
            return "no live worker"
        n = rng.choice(live)
        pr = cl.procs[n]
        if kind == "kill_worker":
            pr.signal(signal.SIGKILL)
            return "%s (pid %d)" % (n, pr.pid)
        if kind == "restart_worker_fast":
            with cl.lock:
                pr.signal(signal.SIGKILL)
                pr.p.wait(5)
                pr.start()  # at once: the old lease has up to TTL_S to run
            return "%s, new pid %d" % (n, pr.pid)
        with cl.lock:
            pr.held = True
        pr.signal(signal.SIGSTOP)
        time.sleep(TTL_S + 3)
        pr.signal(signal.SIGCONT)
        with cl.lock:
            pr.held = False
        return "%s (pid %d) for %d s" % (n, pr.pid, TTL_S + 3)
    if kind == "kill_coordinator":
        n = rng.choice(["c0", "c1"])
        cl.procs[n].signal(signal.SIGKILL)
        return n
    if kind == "kill_etcd_leader":
        n = cl.etcd_leader()
        if not n:
            return "no leader found"
        pr = cl.procs[n]
        with cl.lock:
            pr.held = True
            pr.signal(signal.SIGKILL)
        time.sleep(3)
        with cl.lock:
            pr.held = False
        return n
    raise ValueError(kind)


if __name__ == "__main__":
    sys.exit(main())
