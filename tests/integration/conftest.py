"""Integration tests: real `tessera serve` processes on loopback, talked to over gRPC as clients do.

Run (Debian's python3 has grpcio and grpc_tools; a pyenv python3 usually has not):

    /usr/bin/python3 -m pytest -v -x tests/integration --tessera=build/tessera [--model PATH]

--tessera defaults to $TESSERA_BIN, else build/tessera. The model defaults to
models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch_model.sh). Stubs for proto/ are generated
into a temp folder at session start. TESSERA_KEEP_LOGS=1 keeps each serve's log folder.
When a test fails, the tail of every live serve's logs is attached to its report.
"""

import os
import subprocess
from pathlib import Path

import pytest

import harness


def pytest_addoption(parser):
    parser.addoption("--tessera", default=harness.default_tessera(),
                     help="the tessera binary (default: $TESSERA_BIN or build/tessera)")
    parser.addoption("--model", default=str(harness.DEFAULT_MODEL), help="the model to serve")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for s in list(harness.LIVE):
            rep.sections.append(("tessera serve logs: %s" % s.name, s.log_tail()))


@pytest.fixture(scope="session")
def tessera_bin(pytestconfig):
    b = Path(pytestconfig.getoption("--tessera")).resolve()
    if not os.access(b, os.X_OK):
        pytest.fail("no tessera binary at %s (build it, or pass --tessera)" % b)
    r = subprocess.run([str(b), "serve", "--help"], capture_output=True, text=True, timeout=30)
    if "unknown command" in (r.stdout + r.stderr):
        pytest.fail("%s has no `serve` command:\n%s" % (b, r.stderr))
    return b


@pytest.fixture(scope="session")
def model(pytestconfig):
    m = pytestconfig.getoption("--model")
    if not m.startswith("synthetic:") and not Path(m).exists():
        pytest.fail("model %s not found (scripts/fetch_model.sh fetches the default)" % m)
    return m


@pytest.fixture(scope="session")
def api(tmp_path_factory):
    return harness.load_api(tmp_path_factory.mktemp("stubs"))


@pytest.fixture(scope="session")
def offline(tessera_bin, model):
    return harness.Offline(tessera_bin, model)


@pytest.fixture(scope="session")
def served(tessera_bin, model, api):
    """The shared `tessera serve --replicas 2` (one CPU thread per worker: the machine has 2 cores)."""
    s = harness.Serve(tessera_bin, model, replicas=2, threads=1, name="replicas2")
    s.start()
    try:
        s.wait_ready_groups(2, timeout=60)
    except BaseException:
        print(s.log_tail())
        s.stop()
        raise
    yield s
    s.stop()
    s.cleanup()


@pytest.fixture(scope="session")
def model_id(served, api):
    ms = served.stub.ListModels(api.pb.ListModelsRequest(), timeout=10).models
    assert len(ms) == 1 and ms[0].id, ms
    return ms[0].id


@pytest.fixture(scope="session")
def prompt_tokens(served, api):
    """prompt -> its token count per Tokenize (cached)."""
    cache = {}

    def count(prompt):
        if prompt not in cache:
            r = served.stub.Tokenize(api.pb.TokenizeRequest(prompt=prompt), timeout=30)
            cache[prompt] = len(r.token_ids)
        return cache[prompt]

    return count
