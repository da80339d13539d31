"""deploy/slurm/tessera.sbatch under a real Slurm: slurmctld and two slurmd nodes (n1, n2) on this
machine, set up as ../shared/notes/cluster-ci.md says (Debian slurm-wlm 22.05 and munge; a private
SLURM_CONF; TmpFS per node for PMIx; Open MPI over TCP on loopback). Unlike the notes, munged
listens on a socket of the test's own (AuthInfo=socket=...) and Slurm on free ports, so that
nothing here depends on, or disturbs, a munged or Slurm that something else runs on the machine.
Every daemon is stopped by the pid it wrote, even when a test fails.

  - The CPU variant (TESSERA_DEVICE=cpu) with one replica of pp 2 on `sbatch -N 2 -n 2
    --ntasks-per-node=1`: the group's two ranks sit on n1 and n2. A gRPC client gets the greedy
    answer `tessera generate` gives on one process.
  - `scancel --batch --signal=TERM` during a load of streams drains the job: new requests get
    UNAVAILABLE, every stream completes correctly or ends UNAVAILABLE, the job ends COMPLETED or
    CANCELLED (jobcomp/filetxt), and no process of the job is left.
  - #SBATCH --signal=B:TERM@N (here @100 with --time=2) drains the job before its time limit.
  - A rank killed (SIGKILL, the one on n2): srun ends the step and the script starts the replica
    again; it answers correctly.
  - A bad configuration (too few tasks for replicas x tp x pp; a tp that does not divide the heads)
    fails with one clear error and exit code 2 before anything starts (the script runs at most 2 s).

Skipped (with the reason) when Slurm cannot be set up: not root, or no slurm-wlm/munge and no way to
install them."""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import grpc
import pytest

import harness
from harness import PROMPTS, Stream, check_against, gen_request

SBATCH = harness.REPO / "deploy" / "slurm" / "tessera.sbatch"
# Ranks on the two slurmd of one host segfault in Open MPI's shared-memory transport: TCP on
# loopback. Exported in sbatch's environment, never through --export= (it splits at the comma).
OMPI_ENV = {"OMPI_MCA_btl": "self,tcp", "OMPI_MCA_btl_tcp_if_include": "lo",
            "OMPI_MCA_oob_tcp_if_include": "lo"}
DRAIN_S = 60


def run(argv, timeout=60, check=True, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError("%s exited %d: %s%s" % (" ".join(map(str, argv)), r.returncode, r.stdout, r.stderr))
    return r


def free_port_pair():
    """Two consecutive free TCP ports (slurmd's Port=A-B range)."""
    for _ in range(100):
        p = harness.free_port()
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + 1))
            return p
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")


def read_pid(path):
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop_pid(pid, grace=10):
    if not pid or not harness.pid_alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + grace
    while harness.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if harness.pid_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def environ_of(pid):
    try:
        raw = Path("/proc/%d/environ" % pid).read_bytes()
    except OSError:
        return {}
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


def cmdline_of(pid):
    try:
        return Path("/proc/%d/cmdline" % pid).read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def pids_with_env(key, value):
    """Live processes whose environment has key=value (the processes a job or our Slurm started)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid() and environ_of(int(d.name)).get(key) == value \
                and harness.pid_alive(int(d.name)):
            out.append(int(d.name))
    return out


def ensure_packages():
    """slurmctld, slurmd and munged, installed from Debian if missing (scripts/deps.sh lists them)."""
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "sbatch")):
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=180", "--no-install-recommends",
           "slurm-wlm", "munge"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300, env=env)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if r.returncode != 0 or not shutil.which("slurmctld"):
        return "apt-get install slurm-wlm munge failed: %s" % (r.stderr.strip()[-500:])
    return None


class Slurm:
    """munged, slurmctld and `slurmd -N n1`, `slurmd -N n2` with a private config in a scratch dir."""

    def __init__(self):
        self.st = Path(tempfile.mkdtemp(prefix="tessera-slurm-"))
        self.st.chmod(0o755)  # munge and slurm must reach their dirs inside
        self.conf = self.st / "slurm.conf"
        self.munge_dir = self.st / "munge"
        self.socket = self.munge_dir / "munge.socket"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf), **OMPI_ENV)
        self.env.pop("SLURM_JOB_ID", None)

    def start(self):
        st = self.st
        for d in ("munge", "ctld", "log", "spool-n1", "spool-n2", "tmp-n1", "tmp-n2", "jobs"):
            (st / d).mkdir()
        shutil.chown(self.munge_dir, "munge", "munge")
        for d in ("ctld", "log"):
            shutil.chown(st / d, "slurm", "slurm")
        run(["runuser", "-u", "munge", "--", "/usr/sbin/munged", "--socket=%s" % self.socket,
             "--pid-file=%s" % (self.munge_dir / "munged.pid"), "--log-file=%s" % (self.munge_dir / "munged.log"),
             "--seed-file=%s" % (self.munge_dir / "munged.seed")], timeout=30)
        run("munge -S %s -n | unmunge -S %s" % (self.socket, self.socket), shell=True, timeout=30)
        host = socket.gethostname().split(".")[0]
        ctld_port, node_port = harness.free_port(), free_port_pair()
        self.conf.write_text("""ClusterName=ci
SlurmctldHost={H}(127.0.0.1)
SlurmctldPort={CP}
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={SOCK}
CredType=cred/munge
StateSaveLocation={ST}/ctld
SlurmdSpoolDir={ST}/spool-%n
TmpFS={ST}/tmp-%n
SlurmctldPidFile={ST}/slurmctld.pid
SlurmdPidFile={ST}/slurmd-%n.pid
SlurmctldLogFile={ST}/log/slurmctld.log
SlurmdLogFile={ST}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={ST}/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=5
NodeName=n[1-2] NodeHostname={H} NodeAddr=127.0.0.1 Port={NP}-{NP1} CPUs=2 RealMemory=4000 State=UNKNOWN
PartitionName=ci Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP
""".format(H=host, CP=ctld_port, SOCK=self.socket, ST=st, NP=node_port, NP1=node_port + 1))
        self.conf.chmod(0o644)
        run(["slurmctld"], env=self.env, timeout=30)
        run(["slurmd", "-N", "n1"], env=self.env, timeout=30)
        run(["slurmd", "-N", "n2"], env=self.env, timeout=30)
        harness.wait_for(lambda: run(["sinfo", "-h", "-o", "%t"], env=self.env, check=False, timeout=10)
                         .stdout.split() == ["idle"], 30, interval=0.2, what="both nodes idle in sinfo")
        return self

    def stop(self):
        # whatever a job of ours left (every process Slurm started for us carries our SLURM_CONF)
        for pid in pids_with_env("SLURM_CONF", str(self.conf)):
            if "slurmd" not in cmdline_of(pid) and "slurmctld" not in cmdline_of(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        for f in ("slurmd-n1.pid", "slurmd-n2.pid", "slurmctld.pid"):
            stop_pid(read_pid(self.st / f))
        stop_pid(read_pid(self.munge_dir / "munged.pid"))

    def cleanup(self):
        if not os.environ.get("TESSERA_KEEP_LOGS"):
            shutil.rmtree(self.st, ignore_errors=True)

    def logs(self, n=30):
        return "\n".join("---- %s\n%s" % (p, harness.tail(p, n)) for p in sorted((self.st / "log").glob("*")))

    # -- jobs --

    def sbatch(self, args, env, cwd):
        r = run(["sbatch", "--parsable"] + args + [str(SBATCH)], env=dict(self.env, **env), cwd=str(cwd))
        return int(r.stdout.strip().split(";")[0])

    def queued(self, job):
        r = run(["squeue", "-h", "-j", str(job), "-o", "%T"], env=self.env, check=False, timeout=10)
        return r.returncode == 0 and r.stdout.strip() != ""

    def wait_done(self, job, timeout):
        harness.wait_for(lambda: not self.queued(job) and self.jobcomp(job), timeout, interval=0.1,
                         what="job %d to end" % job)
        return self.jobcomp(job)

    def jobcomp(self, job):
        """The job's final record in jobcomp/filetxt: {"JobState": ..., "ExitCode": ..., ...}."""
        try:
            lines = (self.st / "log" / "jobcomp.txt").read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            rec = dict(re.findall(r"(\w+)=(\S*)", line))
            if rec.get("JobId") == str(job):
                return rec
        return None


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0:
        pytest.skip("skipped: Slurm's daemons and munged need root")
    why = ensure_packages()
    if why:
        pytest.skip("skipped: cannot install Slurm: %s" % why)
    s = Slurm()
    try:
        s.start()
    except BaseException as e:
        s.stop()
        if isinstance(e, (RuntimeError, AssertionError)):
            raise AssertionError("Slurm did not start: %s\n%s" % (e, s.logs())) from None
        raise
    yield s
    s.stop()
    s.cleanup()


def seconds(stamp):
    """A jobcomp time (2026-12-06T14:17:31) as seconds since the epoch."""
    return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))


def job_env(tessera_bin, model, **kw):
    env = {"TESSERA_BIN": str(tessera_bin), "TESSERA_MODEL": str(Path(model).resolve()), "TESSERA_DEVICE": "cpu",
           "TESSERA_THREADS": "1", "TESSERA_PORT": str(harness.free_port()),
           "TESSERA_ETCD_PORT": str(harness.free_port()), "TESSERA_ETCD_PEER_PORT": str(harness.free_port()),
           "TESSERA_DRAIN_S": str(DRAIN_S), "TESSERA_WORKER_ARGS": "--kv-blocks 512"}
    env.update({k: str(v) for k, v in kw.items()})
    return env


def job_logs(cwd, job, n=30):
    files = [cwd / ("tessera-%d.out" % job)] + sorted((cwd / ("tessera-%d" % job)).glob("*.log"))
    return "\n".join("---- %s\n%s" % (p.name, harness.tail(p, n)) for p in files)


def job_processes(slurm, job):
    """(pid, command line) of every live process of the job (each carries SLURM_JOB_ID and our
    SLURM_CONF: job ids start at 1 in every test's Slurm)."""
    return [(p, cmdline_of(p)) for p in pids_with_env("SLURM_JOB_ID", str(job))
            if environ_of(p).get("SLURM_CONF") == str(slurm.conf)]


def test_serves_and_drains(slurm, tessera_bin, model, api, offline):
    cwd = slurm.st / "jobs" / "serve"
    cwd.mkdir()
    env = job_env(tessera_bin, model, TESSERA_PP=2)
    prompt, n_load, max_tokens = PROMPTS[2], 6, 48
    refs = offline.many([dict(prompt=prompt, max_tokens=16)] +
                        [dict(prompt=p, max_tokens=max_tokens, ignore_eos=True) for p in PROMPTS[:n_load]])
    t_start = time.monotonic()
    job = slurm.sbatch(["-N", "2", "-n", "2", "--ntasks-per-node=1"], env, cwd)
    run_dir = cwd / ("tessera-%d" % job)
    channel = None
    try:
        # the script writes the coordinator's address once it accepts connections
        addr_file = run_dir / "address"
        try:
            harness.wait_for(lambda: addr_file.exists() or not slurm.queued(job), 120, interval=0.2,
                             what="%s" % addr_file)
        except AssertionError:
            raise AssertionError("no coordinator address\n%s\n%s" % (job_logs(cwd, job), slurm.logs())) from None
        assert addr_file.exists(), "the job ended before serving: %s\n%s" % (slurm.jobcomp(job), job_logs(cwd, job))
        address = addr_file.read_text().strip()
        host = address.rsplit(":", 1)[0]
        if any(not a.startswith("127.") for a in run(["hostname", "-I"]).stdout.split() if "." in a):
            assert not host.startswith("127."), "coordinator advertised on loopback: %s" % address
        channel = grpc.insecure_channel(address)
        stub = api.rpc.InferenceStub(channel)

        def ready(after_generation=-1):
            st = stub.ClusterStatus(api.pb.ClusterStatusRequest(), timeout=5)
            gs = [g for g in st.groups if g.ready and g.generation > after_generation]
            return len(gs) == 1 and gs[0]

        try:
            group = harness.wait_for(ready, 120, interval=0.3, what="the replica ready")
        except AssertionError as e:
            raise AssertionError("%s\n%s" % (e, job_logs(cwd, job))) from None
        t_ready = time.monotonic()

        # the pp 2 group: one rank on each node
        assert (run_dir / "replica-0.hosts").read_text().split() == ["n1", "n2"]
        ranks = [p for p, c in job_processes(slurm, job) if c.split()[:2] == [str(tessera_bin), "worker"]]
        nodes = sorted(environ_of(p).get("SLURMD_NODENAME", "?") for p in ranks)
        assert nodes == ["n1", "n2"], "worker ranks on %s: %s" % (nodes, job_processes(slurm, job))

        # (a) a correct greedy answer
        s = Stream(stub, gen_request(prompt, 16), timeout=60).run()
        problems = check_against(s, refs[0], 16)
        assert not problems, "%s\n%s" % (problems, job_logs(cwd, job))

        # a rank killed (the one on n2): srun ends the step, the script starts the replica again
        os.kill([p for p in ranks if environ_of(p).get("SLURMD_NODENAME") == "n2"][0], signal.SIGKILL)
        t_kill = time.monotonic()
        try:
            harness.wait_for(lambda: ready(group.generation), 60, interval=0.3, what="the replica back")
        except AssertionError as e:
            raise AssertionError("%s\n%s" % (e, job_logs(cwd, job))) from None
        t_back = time.monotonic()
        s = Stream(stub, gen_request(prompt, 16), timeout=60).run()
        problems = check_against(s, refs[0], 16)
        assert not problems, "after the restart: %s\n%s" % (problems, job_logs(cwd, job))
        assert "replica-0: step exited" in (cwd / ("tessera-%d.out" % job)).read_text()

        # (b) a load of streams, then scancel --batch --signal=TERM
        got = [threading.Event() for _ in range(n_load)]
        streams = [Stream(stub, gen_request(p, max_tokens, ignore_eos=True), timeout=DRAIN_S + 60,
                          on_msg=(lambda i: lambda st, m: st.ids and got[i].set())(i))
                   for i, p in enumerate(PROMPTS[:n_load])]
        threads = [threading.Thread(target=st.run, daemon=True) for st in streams]
        for t in threads:
            t.start()
        for i, e in enumerate(got):
            assert e.wait(60), "stream %d got no token: %s" % (i, streams[i].describe())
        t_term = time.monotonic()
        run(["scancel", "--batch", "--signal=TERM", str(job)], env=slurm.env)

        def refused():
            late = Stream(stub, gen_request("Hello", 4), timeout=10).run()
            return late.code == grpc.StatusCode.UNAVAILABLE and late
        harness.wait_for(refused, 10, interval=0.05, what="a new request refused (UNAVAILABLE) while draining")

        for t in threads:
            t.join(max(0.0, t_term + DRAIN_S + 30 - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "streams still open %d s after SIGTERM" % (DRAIN_S + 30)
        done = 0
        for st, ref, p in zip(streams, refs[1:], PROMPTS):
            if st.code is not None:
                assert st.code == grpc.StatusCode.UNAVAILABLE, "%r: %s" % (p[:30], st.describe())
            else:
                problems = check_against(st, ref, max_tokens)
                assert not problems, "%r after SIGTERM: %s\n%s" % (p[:30], problems, job_logs(cwd, job))
                done += 1

        rec = slurm.wait_done(job, DRAIN_S + 60)
        t_end = time.monotonic()
        assert rec["JobState"] in ("COMPLETED", "CANCELLED"), "%s\n%s" % (rec, job_logs(cwd, job))
        harness.wait_for(lambda: not job_processes(slurm, job), 15, interval=0.2,
                         what="no process of job %d left (%s)" % (job, job_processes(slurm, job)))
        for port in (env["TESSERA_PORT"], env["TESSERA_ETCD_PORT"]):
            assert not harness.port_open("127.0.0.1", int(port)), "port %s still open" % port
        out = (cwd / ("tessera-%d.out" % job)).read_text()
        assert "draining" in out and "stopped (exit 0)" in out, out
        print("slurm job %d: ready %.1f s after sbatch; a rank killed, the replica back in %.1f s; drain: %d of %d streams completed, the rest UNAVAILABLE; "
              "job %s %.1f s after scancel" % (job, t_ready - t_start, t_back - t_kill, done, n_load, rec["JobState"],
                                               t_end - t_term))
    finally:
        if channel is not None:
            channel.close()
        if slurm.queued(job):
            run(["scancel", str(job)], env=slurm.env, check=False)
            try:
                slurm.wait_done(job, 30)
            except AssertionError:
                pass
        for pid, _ in job_processes(slurm, job):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.mark.parametrize("case,args,extra,message", [
    ("too few tasks", ["-N", "1", "-n", "1"], {"TESSERA_PP": 2},
     "this allocation has 1 task(s); 1 replica(s) of tp 1 x pp 2 need 2"),
    ("too few tasks for the replicas", ["-N", "2", "-n", "2"], {"TESSERA_PP": 2, "TESSERA_REPLICAS": 2},
     "this allocation has 2 task(s); 2 replica(s) of tp 1 x pp 2 need 4"),
    ("tp does not divide the heads", ["-N", "2", "-n", "2"], {"TESSERA_TP": 2},
     "tp=2 does not divide 9 attention heads"),
    ("cuda without GPUs", ["-N", "2", "-n", "2"], {"TESSERA_PP": 2, "TESSERA_DEVICE": "cuda"},
     "TESSERA_DEVICE=cuda but this job has no GPUs"),
])
def test_bad_configuration(slurm, tessera_bin, model, case, args, extra, message):
    cwd = slurm.st / "jobs" / re.sub(r"\W+", "-", case)
    cwd.mkdir()
    t0 = time.monotonic()
    job = slurm.sbatch(args, job_env(tessera_bin, model, **extra), cwd)
    rec = slurm.wait_done(job, 60)
    took = time.monotonic() - t0
    ran = seconds(rec["EndTime"]) - seconds(rec["StartTime"])
    assert ran <= 2, "%s: the script ran %d s before failing" % (case, ran)
    out = (cwd / ("tessera-%d.out" % job)).read_text()
    assert rec["JobState"] == "FAILED" and rec["ExitCode"] == "2:0", "%s: %s\n%s" % (case, rec, out)
    errors = [l for l in out.splitlines() if "error" in l]
    assert len(errors) == 1 and message in errors[0], "%s: want one error with %r:\n%s" % (case, message, out)
    assert not (cwd / ("tessera-%d" % job)).exists(), "%s: the job started something:\n%s" % (case, out)
    assert not job_processes(slurm, job)
    print("%s: job %d FAILED (exit 2), script ran %d s, %.1f s after sbatch: %s" % (case, job, ran, took, errors[0]))


def test_worker_refuses_configuration(slurm, tessera_bin, model):
    """A configuration only the workers can refuse (a worker option out of range, passed through
    TESSERA_WORKER_ARGS; the same on CPU and CUDA builds): the replica is not started again and
    again, the job ends with exit 2 and leaves nothing running."""
    cwd = slurm.st / "jobs" / "refused"
    cwd.mkdir()
    job = slurm.sbatch(["-N", "2", "-n", "2", "--ntasks-per-node=1"],
                       job_env(tessera_bin, model, TESSERA_PP=2, TESSERA_DEVICE="cpu",
                               TESSERA_WORKER_ARGS="--step-timeout -1"), cwd)
    rec = slurm.wait_done(job, 90)
    out = (cwd / ("tessera-%d.out" % job)).read_text()
    assert rec["JobState"] == "FAILED" and rec["ExitCode"] == "2:0", "%s\n%s" % (rec, job_logs(cwd, job))
    assert "replica-0 exited 2 (bad configuration)" in out and "starting it again" not in out, out
    assert "--step-timeout: '-1' is not an integer" in out, out
    harness.wait_for(lambda: not job_processes(slurm, job), 15, interval=0.2, what="no process of job %d left" % job)
    print("a worker option out of range: job %d FAILED (exit 2) %d s after it started" % (
        job, seconds(rec["EndTime"]) - seconds(rec["StartTime"])))


def test_time_limit_drains(slurm, tessera_bin, model, api, offline):
    """#SBATCH --signal=B:TERM@N: before the time limit Slurm signals the batch script, which
    drains and ends the job COMPLETED before the limit. (Slurm checks about once a minute, so the
    signal comes 20 to 80 s into this 2-minute job.)"""
    cwd = slurm.st / "jobs" / "time-limit"
    cwd.mkdir()
    ref = offline(prompt=PROMPTS[3], max_tokens=8)
    job = slurm.sbatch(["-N", "2", "-n", "2", "--ntasks-per-node=1", "--time=2", "--signal=B:TERM@100"],
                       job_env(tessera_bin, model, TESSERA_PP=2, TESSERA_DRAIN_S=20), cwd)
    try:
        addr_file = cwd / ("tessera-%d" % job) / "address"
        harness.wait_for(lambda: addr_file.exists() or not slurm.queued(job), 60, interval=0.2, what=str(addr_file))
        with grpc.insecure_channel(addr_file.read_text().strip()) as channel:
            stub = api.rpc.InferenceStub(channel)
            st = harness.wait_for(lambda: (lambda st: st.code is None and st)(
                Stream(stub, gen_request(PROMPTS[3], 8), timeout=30).run()), 60, interval=0.5, what="an answer")
            assert not check_against(st, ref, 8), check_against(st, ref, 8)
        rec = slurm.wait_done(job, 150)
        out = (cwd / ("tessera-%d.out" % job)).read_text()
        ran = seconds(rec["EndTime"]) - seconds(rec["StartTime"])
        assert rec["JobState"] == "COMPLETED" and ran < 120, "%s (ran %d s)\n%s" % (rec, ran, job_logs(cwd, job))
        assert "draining" in out and "stopped (exit 0)" in out, out
        harness.wait_for(lambda: not job_processes(slurm, job), 15, interval=0.2, what="no process of job %d left" % job)
        print("time limit 2 min, --signal=B:TERM@100: drained and COMPLETED %d s into the job" % ran)
    finally:
        if slurm.queued(job):
            run(["scancel", str(job)], env=slurm.env, check=False)
