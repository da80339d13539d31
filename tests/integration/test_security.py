"""Security on the public ports and to etcd (docs/operations.md, Security): the API key on every
tessera.v1.Inference method and every /v1 route, TLS on the gRPC and HTTP ports, mutual TLS, and
etcd over TLS with a user. Certificates are made with openssl at test time: a CA, a server
certificate for 127.0.0.1 and localhost, a client certificate, and a second CA nobody trusts."""

import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import time

import grpc
import pytest

import harness

KEY = "sk-test-0123456789abcdef"
OPENSSL = shutil.which("openssl")


def sh(*argv, cwd):
    r = subprocess.run(list(argv), cwd=str(cwd), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, "%s: %s" % (" ".join(argv), r.stderr)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if not OPENSSL:
        pytest.skip("no openssl binary (scripts/deps.sh installs it)")
    d = tmp_path_factory.mktemp("certs")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        sh(OPENSSL, "req", "-x509", *ec, "-keyout", ca + ".key", "-out", ca + ".pem", "-days", "2", "-subj",
           "/CN=tessera test " + ca, cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    # the client certificate has no Common Name: etcd 3.4's gateway refuses one that has (it would
    # not apply CN-based auth through the gateway, so it says so rather than ignore it)
    for name, subj in (("server", "/CN=server"), ("client", "/O=tessera test client")):
        sh(OPENSSL, "req", *ec, "-keyout", name + ".key", "-out", name + ".csr", "-subj", subj, cwd=d)
        sh(OPENSSL, "x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
           "-out", name + ".pem", "-days", "2", "-extfile", name + ".ext", cwd=d)
    (d / "api.key").write_text(KEY + "\n")
    (d / "empty.key").write_text("\n")
    return d


def creds(certs, ca="ca.pem", client=False):
    return grpc.ssl_channel_credentials(
        root_certificates=(certs / ca).read_bytes(),
        private_key=(certs / "client.key").read_bytes() if client else None,
        certificate_chain=(certs / "client.pem").read_bytes() if client else None)


def auth(key=KEY):
    return [("authorization", "Bearer " + key)]


def code_of(fn):
    try:
        fn()
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def https(port, certs, ca="ca.pem", client=False):
    ctx = ssl.create_default_context(cafile=str(certs / ca))
    if client:
        ctx.load_cert_chain(str(certs / "client.pem"), str(certs / "client.key"))
    return http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)


def request(conn, method, path, body=None, key=None):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    r = conn.getresponse()
    return r.status, r.getheader("WWW-Authenticate"), r.read().decode()


class TlsServe(harness.Serve):
    """serve with TLS: the harness's plain-text channel cannot reach it, so this one waits for the
    'serving' line and opens a TLS channel of its own."""

    def __init__(self, *a, certs, **kw):
        super().__init__(*a, **kw)
        self.certs = certs

    def start(self):
        self.out_path, self.err_path = self.base / "serve.stdout", self.base / "serve.stderr"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         start_new_session=True, cwd=str(harness.REPO))
        harness.LIVE.add(self)
        try:
            harness.wait_for(lambda: self.proc.poll() is not None or b"serving" in self.out_path.read_bytes(),
                             self.startup_timeout, what="serve's 'serving' line")
            if self.proc.poll() is not None:
                raise harness.ServeError("serve exited with %d\n%s" % (self.proc.returncode, self.log_tail()))
            self.channel = grpc.secure_channel(self.address, creds(self.certs))
            a = harness.api()
            self.stub, self.health = a.rpc.InferenceStub(self.channel), a.health_rpc.HealthStub(self.channel)
        except BaseException:
            self.stop()
            raise
        return self


def test_api_key_and_tls(tessera_bin, model, api, certs):
    http_port = harness.free_port()
    extra = ["--api-key-file", str(certs / "api.key"), "--tls-cert", str(certs / "server.pem"), "--tls-key",
             str(certs / "server.key"), "--http-port", str(http_port), "--served-model-name", "secret-model-x"]
    s = TlsServe(tessera_bin, model, threads=2, extra=extra, name="security", certs=certs)
    with s:
        serve_json = s.read_json()
        internal = ["secret-model-x", "SmolLM2", serve_json["etcd"].split("//")[-1]]
        # where the worker listens, as the coordinator knows it (ClusterStatus, with the key)
        st = s.stub.ClusterStatus(api.pb.ClusterStatusRequest(), metadata=auth(), timeout=10)
        internal += [g.address for g in st.groups]
        assert st.groups, "no group in ClusterStatus"

        gen = api.pb.GenerateRequest(prompt="Hello", max_tokens=4)
        calls = {
            "Generate": lambda md: list(s.stub.Generate(gen, metadata=md, timeout=30)),
            "Tokenize": lambda md: s.stub.Tokenize(api.pb.TokenizeRequest(prompt="Hi"), metadata=md, timeout=10),
            "ListModels": lambda md: s.stub.ListModels(api.pb.ListModelsRequest(), metadata=md, timeout=10),
            "ClusterStatus": lambda md: s.stub.ClusterStatus(api.pb.ClusterStatusRequest(), metadata=md, timeout=10),
        }
        for name, call in calls.items():
            for md in ((), auth("wrong-key"), [("authorization", KEY)]):
                code, details = code_of(lambda: call(md))
                assert code == grpc.StatusCode.UNAUTHENTICATED, "%s with %r: %s %s" % (name, md, code, details)
                for word in internal:
                    assert word not in details, "%s's refusal names %r: %s" % (name, word, details)
        # with the key, all of it works
        out = list(s.stub.Generate(gen, metadata=auth(), timeout=60))
        assert out and out[-1].HasField("finish_reason"), out
        assert s.stub.ListModels(api.pb.ListModelsRequest(), metadata=auth(), timeout=10).models[0].id == \
            "secret-model-x"
        # the health check stays open for probes
        r = s.health.Check(api.health_pb.HealthCheckRequest(service=""), timeout=10)
        assert r.status == api.health_pb.HealthCheckResponse.SERVING

        # TLS: another CA fails the handshake; plain text fails cleanly; the server goes on
        with grpc.secure_channel(s.address, creds(certs, "other-ca.pem")) as ch:
            code, _ = code_of(lambda: api.rpc.InferenceStub(ch).ListModels(
                api.pb.ListModelsRequest(), metadata=auth(), timeout=5))
            assert code == grpc.StatusCode.UNAVAILABLE, code
        with grpc.insecure_channel(s.address) as ch:
            t0 = time.monotonic()
            code, _ = code_of(lambda: api.rpc.InferenceStub(ch).ListModels(
                api.pb.ListModelsRequest(), metadata=auth(), timeout=5))
            assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), code
            assert time.monotonic() - t0 < 10
        assert s.stub.ListModels(api.pb.ListModelsRequest(), metadata=auth(), timeout=10).models

        # HTTP: 401 with OpenAI's error object and a Bearer challenge, naming nothing internal
        chat = {"model": "secret-model-x", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        for method, path, body in (("GET", "/v1/models", None), ("POST", "/v1/chat/completions", chat),
                                   ("POST", "/v1/completions", {"model": "secret-model-x", "prompt": "Hi"}),
                                   ("GET", "/v1/models/secret-model-x", None), ("GET", "/nowhere", None)):
            for key in (None, "wrong-key"):
                c = https(http_port, certs)
                status, challenge, text = request(c, method, path, body, key)
                c.close()
                assert status == 401, (method, path, key, status, text)
                assert challenge and challenge.startswith("Bearer"), challenge
                err = json.loads(text)["error"]
                assert err["code"] == "invalid_api_key" and err["type"] == "invalid_request_error", err
                assert err["param"] is None, err
                for word in internal + ["wrong-key"]:
                    assert word not in text, "%s %s: the 401 names %r: %s" % (method, path, word, text)
        c = https(http_port, certs)
        for path in ("/health", "/ready"):
            status, _, text = request(c, "GET", path)
            assert status == 200, (path, status, text)
        status, _, text = request(c, "GET", "/v1/models", key=KEY)
        assert status == 200 and "secret-model-x" in text, text
        status, _, text = request(c, "POST", "/v1/chat/completions", chat, key=KEY)
        assert status == 200 and json.loads(text)["choices"][0]["message"]["content"] is not None, text
        c.close()
        with pytest.raises(ssl.SSLCertVerificationError):
            c = https(http_port, certs, "other-ca.pem")
            request(c, "GET", "/health")
        # plain HTTP to the TLS port: an error at once, not a hang; the server goes on serving
        plain = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
        t0 = time.monotonic()
        try:
            plain.request("GET", "/health")
            status = plain.getresponse().status
            assert status != 200, "plain HTTP got 200 from the TLS port"
        except (http.client.HTTPException, OSError):
            pass
        assert time.monotonic() - t0 < 5
        plain.close()
        c = https(http_port, certs)
        assert request(c, "GET", "/v1/models", key=KEY)[0] == 200
        c.close()

        # the CLI client: --tls-ca and the key from a file or the environment
        base = [str(tessera_bin), "client", "--address", s.address, "--tls-ca", str(certs / "ca.pem"),
                "--list-models", "--timeout", "20"]
        env = {k: v for k, v in os.environ.items() if k != "TESSERA_API_KEY"}
        r = subprocess.run(base + ["--api-key-file", str(certs / "api.key")], capture_output=True, text=True,
                           timeout=30, env=env)
        assert r.returncode == 0 and "secret-model-x" in r.stdout, r.stderr
        r = subprocess.run(base, capture_output=True, text=True, timeout=30, env=dict(env, TESSERA_API_KEY=KEY))
        assert r.returncode == 0 and "secret-model-x" in r.stdout, r.stderr
        r = subprocess.run(base, capture_output=True, text=True, timeout=30, env=env)
        assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr, (r.returncode, r.stderr)


def test_bad_security_files(tessera_bin, model, certs, tmp_path):
    """A bad key or TLS file is one clear error (exit 2) before anything starts."""
    t, dead = str(tessera_bin), "http://127.0.0.1:%d" % harness.free_port()
    pem = lambda n: str(certs / n)  # noqa: E731
    cases = [
        (["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", pem("server.key")], "--tls-cert"),
        (["--tls-cert", pem("server.pem"), "--tls-key", pem("client.key")], "is not the key of --tls-cert"),
        (["--tls-cert", pem("server.pem")], "--tls-cert needs --tls-key"),
        (["--tls-cert", pem("server.pem"), "--tls-key", pem("api.key")], "no PEM private key"),
        (["--tls-cert", pem("server.pem"), "--tls-key", pem("server.key"), "--tls-client-ca", pem("api.key")],
         "--tls-client-ca"),
        (["--api-key-file", pem("empty.key")], "the API key is empty"),
        (["--api-key-file", str(tmp_path / "nokey")], "--api-key-file"),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCDCTL_", "TESSERA_API_KEY"))}
    for cmd in ("coordinator", "serve"):
        for flags, want in cases:
            argv = [t, cmd, "--model", model, "--etcd", dead] + flags
            if cmd == "serve":
                argv += ["--dir", str(tmp_path / "serve")]
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env,
                               stdin=subprocess.DEVNULL)
            first = r.stderr.split("\n", 1)[0]
            assert r.returncode == 2 and want in first, (cmd, flags, r.returncode, r.stderr)
            assert KEY not in r.stderr


def start_etcd(tmp_path, certs):
    port, peer = harness.free_port(), harness.free_port()
    url, purl = "https://127.0.0.1:%d" % port, "http://127.0.0.1:%d" % peer
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}
    log = open(tmp_path / "etcd.log", "wb")
    p = subprocess.Popen(
        ["/usr/bin/etcd", "--name", "sec", "--data-dir", str(tmp_path / "etcd-data"), "--listen-client-urls", url,
         "--advertise-client-urls", url, "--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
         "--initial-cluster", "sec=" + purl, "--cert-file", str(certs / "server.pem"), "--key-file",
         str(certs / "server.key"), "--trusted-ca-file", str(certs / "ca.pem"), "--client-cert-auth"],
        stdout=log, stderr=log, env=env, start_new_session=True)
    ctl_env = dict(env, ETCDCTL_API="3", ETCDCTL_ENDPOINTS=url, ETCDCTL_CACERT=str(certs / "ca.pem"),
                   ETCDCTL_CERT=str(certs / "client.pem"), ETCDCTL_KEY=str(certs / "client.key"))

    def ctl(*args):
        return subprocess.run(["etcdctl", *args], capture_output=True, text=True, timeout=20, env=ctl_env)

    harness.wait_for(lambda: ctl("endpoint", "health").returncode == 0, 20, what="etcd over TLS")
    for args in (("user", "add", "root:pw"), ("auth", "enable")):
        r = ctl(*args)
        assert r.returncode == 0, (args, r.stderr)
    return p, dict(ctl_env, ETCDCTL_USER="root:pw")


@pytest.mark.skipif(not os.access("/usr/bin/etcd", os.X_OK) or not shutil.which("etcdctl"),
                    reason="no etcd or etcdctl (etcd-server, etcd-client)")
def test_etcd_tls_auth_and_mtls(tessera_bin, model, api, certs, tmp_path):
    """A worker and a coordinator meet through an etcd that wants TLS, a client certificate and a
    user, all from etcdctl's environment; the coordinator wants client certificates (mutual TLS)."""
    etcd, env = start_etcd(tmp_path, certs)
    env.pop("ETCDCTL_API")
    procs = [etcd]
    port, http_port = harness.free_port(), harness.free_port()
    try:
        # a wrong password is one clear error before anything starts
        r = subprocess.run([str(tessera_bin), "coordinator", "--model", model],
                           env=dict(env, ETCDCTL_USER="root:wrong"), capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and "authenticating as root" in r.stderr, r.stderr
        assert "wrong" not in r.stderr.split("authenticating")[0]
        tls = ["--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
               "--tls-client-ca", str(certs / "ca.pem")]
        for name, argv in (("coordinator", ["coordinator", "--port", str(port), "--http-port", str(http_port)] + tls),
                           ("worker", ["worker", "--id", "w0", "--threads", "2"])):
            log = open(tmp_path / (name + ".log"), "wb")
            procs.append(subprocess.Popen([str(tessera_bin)] + argv + ["--model", model], stdout=log, stderr=log,
                                          env=dict(env, TESSERA_API_KEY=KEY), start_new_session=True))
        ch = grpc.secure_channel("127.0.0.1:%d" % port, creds(certs, client=True))
        stub = api.rpc.InferenceStub(ch)

        def ready():
            try:
                m = stub.ListModels(api.pb.ListModelsRequest(), metadata=auth(), timeout=2).models
                return m and m[0].ready_replicas >= 1
            except grpc.RpcError:
                assert all(p.poll() is None for p in procs), "a process exited: %s" % [
                    harness.tail(tmp_path / n) for n in ("coordinator.log", "worker.log")]
                return False

        harness.wait_for(ready, 60, interval=0.3, what="a ready replica through etcd with TLS and auth")
        out = list(stub.Generate(api.pb.GenerateRequest(prompt="Hello", max_tokens=4), metadata=auth(), timeout=60))
        assert out and out[-1].HasField("finish_reason")
        # every token etcd gave out goes stale (auth disable forgets them): the processes
        # re-authenticate, so the worker's lease lives on and its group stays ready
        for args in (("auth", "disable"), ("auth", "enable")):
            r = subprocess.run(["etcdctl", *args], capture_output=True, text=True, timeout=20,
                               env=dict(env, ETCDCTL_API="3"))
            assert r.returncode == 0, (args, r.stderr)
        time.sleep(7)  # over two lease TTLs (3 s): a worker that could not refresh would be gone
        m = stub.ListModels(api.pb.ListModelsRequest(), metadata=auth(), timeout=10).models
        assert m[0].ready_replicas == 1, m
        wlog = (tmp_path / "worker.log").read_text()
        assert "lost its etcd lease" not in wlog, wlog[-2000:]
        for name in ("coordinator.log", "worker.log"):  # not one call failed on a stale token
            text = (tmp_path / name).read_text()
            assert "invalid auth token" not in text, text[-2000:]
        out = list(stub.Generate(api.pb.GenerateRequest(prompt="Hello", max_tokens=4), metadata=auth(), timeout=60))
        assert out and out[-1].HasField("finish_reason")
        # mutual TLS: no client certificate, no call (gRPC) and no answer (HTTP)
        with grpc.secure_channel("127.0.0.1:%d" % port, creds(certs)) as bare:
            code, _ = code_of(lambda: api.rpc.InferenceStub(bare).ListModels(
                api.pb.ListModelsRequest(), metadata=auth(), timeout=5))
            assert code == grpc.StatusCode.UNAVAILABLE, code
        with pytest.raises((ssl.SSLError, http.client.HTTPException, OSError)):
            c = https(http_port, certs)
            request(c, "GET", "/health")
        c = https(http_port, certs, client=True)
        assert request(c, "GET", "/v1/models", key=KEY)[0] == 200
        c.close()
        ch.close()
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
