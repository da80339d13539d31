"""--served-model-name, --max-model-len and --kv-cache-dtype through `tessera serve`: clients see
the served name (gRPC ListModels, HTTP /v1/models) and only it is accepted; a request longer than
the served context is refused by the coordinator naming the bound; the workers get the same bound,
and the KV cache type (bf16 here, not the CPU's default f32), which their load line names."""

import http.client
import json
from pathlib import Path

import grpc
import pytest

import harness
from harness import Stream, gen_request

NAME = "smol-test"
MAX_LEN = 64


@pytest.fixture(scope="module")
def srv(tessera_bin, model):
    port = harness.free_port()
    s = harness.Serve(tessera_bin, model, replicas=1, threads=1, name="names",
                      extra=["--http-port", str(port), "--served-model-name", NAME, "--max-model-len", str(MAX_LEN),
                             "--kv-cache-dtype", "bf16"])
    s.start()
    try:
        s.wait_ready_groups(1, timeout=60)
    except BaseException:
        s.stop()
        raise
    s.http_port = port
    yield s
    s.stop()
    s.cleanup()


def request(model_name=None, **kw):
    r = gen_request(**kw)
    if model_name is not None:
        r.model = model_name
    return r


def test_served_name_and_length(srv, api, model):
    ms = srv.stub.ListModels(api.pb.ListModelsRequest(), timeout=10).models
    assert [(m.id, m.context_length) for m in ms] == [(NAME, MAX_LEN)]
    c = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=30)
    c.request("GET", "/v1/models")
    data = json.loads(c.getresponse().read())["data"]
    c.close()
    assert [(m["id"], m["max_model_len"]) for m in data] == [(NAME, MAX_LEN)]

    ok = Stream(srv.stub, request(NAME, prompt="Hello", max_tokens=4), timeout=60).run()
    assert ok.code is None and ok.last.usage.completion_tokens > 0, ok.describe()
    # with a served name, the file's path is not a name of the model
    other = Stream(srv.stub, request(str(model), prompt="Hello", max_tokens=4), timeout=30).run()
    assert other.code == grpc.StatusCode.NOT_FOUND and NAME in other.details, other.describe()
    # prompt plus max_tokens over the served context: refused, naming it
    long = Stream(srv.stub, gen_request(prompt="Hello", max_tokens=MAX_LEN), timeout=30).run()
    assert long.code == grpc.StatusCode.INVALID_ARGUMENT and "%d tokens" % MAX_LEN in long.details, \
        long.describe()
    fits = Stream(srv.stub, gen_request(prompt="Hello", max_tokens=MAX_LEN - 8, ignore_eos=True),
                  timeout=120).run()
    assert fits.code is None and fits.last.usage.completion_tokens == MAX_LEN - 8, fits.describe()

    # the worker runs with the same bound
    info = srv.read_json()
    argvs = [Path("/proc/%d/cmdline" % w["pid"]).read_bytes().split(b"\0") for w in info["workers"]]
    assert argvs and all(a[a.index(b"--max-model-len") + 1] == str(MAX_LEN).encode() for a in argvs), argvs
    assert all(a[a.index(b"--kv-cache-dtype") + 1] == b"bf16" for a in argvs), argvs
    logs = [p.read_text(errors="replace") for p in sorted(srv.dir.glob("worker-*.log"))]
    assert logs and all("(BF16); Worker service on" in t for t in logs), [t[-2000:] for t in logs]
