"""The chaos soak in its CI form (scripts/soak.py with its default length): a 3-member etcd, 2 coordinators
and 3 replicas under load, every fault kind injected at least once; the script checks its ledger
(no hung stream, no wrong answer, KV pools full when idle, nothing left running) and exits 1
otherwise. The 30-minute run is in docs/reliability.md."""

import subprocess
import sys

from harness import REPO


def test_soak(tessera_bin, model):
    cmd = [sys.executable, str(REPO / "scripts" / "soak.py"), "--tessera", str(tessera_bin),
           "--model", str(model)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    print(r.stdout[-4000:])
    assert r.returncode == 0, "soak failed:\n%s\n%s" % (r.stdout[-6000:], r.stderr[-3000:])
