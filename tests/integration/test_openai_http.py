"""OpenAI's HTTP API (`--http-port`), driven by the official `openai` Python package as its users
drive it: chat, completions, streaming, stop, seed, refusals of what tessera does not do, unknown
models; the same answer as gRPC for the same request; 64 concurrent streams each equal to the same
request sent alone; a client that disconnects cancels its request on the worker. Raw HTTP for
what the SDK will not send (malformed JSON, invalid UTF-8, a huge body, an unknown path).
"""

import http.client
import json
import math
import re
import threading
import time

import grpc
import openai  # PyPI's, pinned in scripts/deps.sh
import pytest

import harness
from harness import Stream, gen_request

PROMPT = "The capital of France is"
CHAT = [("user", "Name three colors of the rainbow.")]


@pytest.fixture(scope="module")
def srv(tessera_bin, model, api):
    port = harness.free_port()
    s = harness.Serve(tessera_bin, model, replicas=1, threads=1, extra=["--http-port", str(port)],
                      name="http")
    s.start()
    try:
        s.wait_ready_groups(1, timeout=60)
        assert s.read_json().get("http_address") == "127.0.0.1:%d" % port
    except BaseException:
        s.stop()
        raise
    s.http_port = port
    s.client = openai.OpenAI(base_url="http://127.0.0.1:%d/v1" % port, api_key="none", timeout=120,
                             max_retries=0)
    s.model_id = s.client.models.list().data[0].id
    yield s
    s.stop()
    # the coordinator ran every request above: under the sanitizers (scripts/test.sh), a report
    # in its log (it lives on, restarted by serve, after one) fails the module
    log = (s.dir / "coordinator.log").read_text(errors="replace")
    reports = [line for line in log.splitlines() if "Sanitizer" in line or "runtime error:" in line]
    err = (s.base / "serve.stderr").read_text(errors="replace")
    restarts = err.count("coordinator was killed") + err.count("coordinator exited")
    s.cleanup()
    assert not reports and not restarts, "coordinator: %s; %d restarts" % (reports[:5], restarts)


def grpc_text(srv, **kw):
    st = Stream(srv.stub, gen_request(**kw), timeout=120).run()
    assert st.code is None and st.error is None, st.describe()
    return st


def chat_messages():
    return [{"role": r, "content": c} for r, c in CHAT]


def raw(srv, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=60)
    try:
        c.request(method, path, body=body, headers=headers or {"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def error_of(status, body):
    e = json.loads(body)["error"]
    assert set(e) >= {"message", "type", "param", "code"}, e
    assert e["message"], e
    return e


def test_models(srv):
    ms = srv.client.models.list().data
    assert len(ms) == 1 and ms[0].id == "SmolLM2-135M-Instruct.Q4_1" and ms[0].object == "model"
    assert srv.client.models.retrieve(ms[0].id).id == ms[0].id
    with pytest.raises(openai.NotFoundError):
        srv.client.models.retrieve("no-such-model")


def test_chat_equals_grpc(srv):
    r = srv.client.chat.completions.create(model=srv.model_id, messages=chat_messages(), max_tokens=24,
                                           temperature=0)
    g = grpc_text(srv, messages=CHAT, max_tokens=24, temperature=0.0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.created > 0
    assert r.model == srv.model_id and r.system_fingerprint
    assert len(r.choices) == 1 and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == g.text and g.text
    assert r.choices[0].finish_reason == g.finish
    assert r.usage.prompt_tokens == g.last.usage.prompt_tokens
    assert r.usage.completion_tokens == g.last.usage.completion_tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # the same prompt again finds its whole blocks in the worker's prefix cache, all but the
    # last token's (computed for its logits), and says so on both transports; the answer is the same
    whole = (r.usage.prompt_tokens - 1) // 16 * 16
    assert whole > 0 and g.last.usage.HasField("cached_tokens")
    assert g.last.usage.cached_tokens == whole
    again = srv.client.chat.completions.create(model=srv.model_id, messages=chat_messages(),
                                               max_tokens=24, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens == whole
    assert again.choices[0].message.content == g.text


def test_completion_equals_grpc(srv):
    r = srv.client.completions.create(model=srv.model_id, prompt=PROMPT, max_tokens=16, temperature=0)
    g = grpc_text(srv, prompt=PROMPT, max_tokens=16, temperature=0.0)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].text == g.text and g.text
    assert r.choices[0].finish_reason == g.finish == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (g.last.usage.prompt_tokens, 16)
    # the prompt as token ids
    ids = srv.stub.Tokenize(harness.api().pb.TokenizeRequest(prompt=PROMPT), timeout=30).token_ids
    r2 = srv.client.completions.create(model=srv.model_id, prompt=list(ids), max_tokens=16, temperature=0)
    assert r2.choices[0].text == g.text


def test_streaming(srv):
    whole = srv.client.chat.completions.create(model=srv.model_id, messages=chat_messages(), max_tokens=24,
                                               temperature=0)
    chunks = list(srv.client.chat.completions.create(model=srv.model_id, messages=chat_messages(),
                                                     max_tokens=24, temperature=0, stream=True,
                                                     stream_options={"include_usage": True}))
    assert len(chunks) >= 3
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    # include_usage: a last chunk with no choices and the usage; none before it
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    # completions, without include_usage: no usage chunk
    cs = list(srv.client.completions.create(model=srv.model_id, prompt=PROMPT, max_tokens=16, temperature=0,
                                            stream=True))
    assert all(c.choices for c in cs)
    assert "".join(c.choices[0].text for c in cs) == grpc_text(srv, prompt=PROMPT, max_tokens=16,
                                                               temperature=0.0).text


def test_sse_ends_with_done(srv):
    status, body = raw(srv, "POST", "/v1/completions",
                       json.dumps({"prompt": PROMPT, "max_tokens": 4, "stream": True}))
    assert status == 200
    events = [e for e in body.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)


def test_stop(srv):
    base = srv.client.completions.create(model=srv.model_id, prompt=PROMPT, max_tokens=16, temperature=0)
    text = base.choices[0].text
    assert len(text.strip()) > 2
    stop = text.strip()[1:3]  # a string inside the answer
    cut = text[:text.index(stop)]
    for s in (stop, [stop, "zzzz-never"]):
        r = srv.client.completions.create(model=srv.model_id, prompt=PROMPT, max_tokens=16, temperature=0,
                                          stop=s)
        assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop"
    g = Stream(srv.stub, _with_stop(gen_request(prompt=PROMPT, max_tokens=16, temperature=0.0), stop),
               timeout=60).run()
    assert g.text == cut and g.finish == "stop", g.describe()


def _with_stop(r, stop):
    r.stop.append(stop)
    return r


def test_seed(srv):
    def ask(seed):
        return srv.client.completions.create(model=srv.model_id, prompt=PROMPT, max_tokens=12,
                                             temperature=1.0, top_p=0.95, seed=seed,
                                             extra_body={"top_k": 50}).choices[0].text

    a, b = ask(1234), ask(1234)
    assert a == b
    g = grpc_text(srv, prompt=PROMPT, max_tokens=12, temperature=1.0, top_p=0.95, top_k=50, seed=1234)
    assert a == g.text
    assert any(ask(s) != a for s in (1, 2, 3, 4)), "the seed changes nothing"


@pytest.mark.parametrize("kw,param", [
    ({"n": 9}, "n"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"logit_bias": {"x": 1}}, "logit_bias"),
    ({"extra_body": {"best_of": 2}}, "best_of"),
    ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
    ({"temperature": "hot"}, "temperature"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"stop": [1, 2]}, "stop"),
])
def test_bad_field(srv, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        srv.client.chat.completions.create(model=srv.model_id, messages=chat_messages(),
                                           **{"max_tokens": 4, **kw})
    assert e.value.status_code == 400
    err = e.value.body
    assert err["param"] == param and param in err["message"], err


def _grpc_logprobs(srv, top, **kw):
    r = gen_request(**kw)
    r.logprobs = True
    r.top_logprobs = top
    st = Stream(srv.stub, r, timeout=120).run()
    assert st.code is None and st.error is None, st.describe()
    tops = [t for m in st.msgs for t in m.top_logprobs]
    assert len(tops) == len(st.ids) == len(st.logprobs), st.describe()
    return st, tops


def _check_top(lp, tops, greedy):
    """One token: its alternatives sorted descending, their mass at most 1, the greedy pick first
    with the same logprob."""
    vals = [t[1] for t in tops]
    assert vals == sorted(vals, reverse=True), vals
    assert sum(math.exp(v) for v in vals) <= 1 + 1e-5, vals
    assert all(v <= 1e-6 for v in vals)
    if greedy:
        assert vals[0] == lp, (vals, lp)


def test_chat_logprobs_top5(srv):
    r = srv.client.chat.completions.create(model=srv.model_id, messages=chat_messages(), max_tokens=12,
                                           temperature=0, logprobs=True, top_logprobs=5)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 12
    for c in content:
        assert len(c.top_logprobs) == 5
        _check_top(c.logprob, [(t.token, t.logprob) for t in c.top_logprobs], greedy=True)
        assert c.token == c.top_logprobs[0].token
        assert c.bytes == list(c.token.encode()), c
    # the same numbers over gRPC
    g, tops = _grpc_logprobs(srv, 5, messages=CHAT, max_tokens=12, temperature=0.0)
    assert [c.logprob for c in content] == list(g.logprobs)
    assert [[t.logprob for t in c.top_logprobs] for c in content] == [list(t.logprobs) for t in tops]
    assert all(t.token_ids[0] == i for t, i in zip(tops, g.ids))
    assert "".join(c.token for c in content) == r.choices[0].message.content
    # sampled: the chosen token need not be the first, but is among the alternatives' distribution
    s = srv.client.chat.completions.create(model=srv.model_id, messages=chat_messages(), max_tokens=12,
                                           temperature=1.5, seed=3, logprobs=True, top_logprobs=3)
    for c in s.choices[0].logprobs.content:
        _check_top(c.logprob, [(t.token, t.logprob) for t in c.top_logprobs], greedy=False)
        assert c.logprob <= c.top_logprobs[0].logprob
    # streamed: the same logprobs, chunk by chunk
    chunks = list(srv.client.chat.completions.create(model=srv.model_id, messages=chat_messages(),
                                                     max_tokens=12, temperature=0, logprobs=True,
                                                     top_logprobs=5, stream=True))
    streamed = [c for ch in chunks if ch.choices and ch.choices[0].logprobs
                for c in ch.choices[0].logprobs.content]
    assert [c.logprob for c in streamed] == [c.logprob for c in content]


def test_completion_logprobs(srv):
    r = srv.client.completions.create(model=srv.model_id, prompt=PROMPT, max_tokens=10, temperature=0,
                                      logprobs=5)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 10
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(10)]
    for tok, l, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert 1 <= len(top) <= 5 and top[tok] == l
        _check_top(l, sorted(top.items(), key=lambda kv: -kv[1]), greedy=True)
    g, tops = _grpc_logprobs(srv, 5, prompt=PROMPT, max_tokens=10, temperature=0.0)
    assert lp.token_logprobs == list(g.logprobs)


def test_n_choices(srv):
    def ask(n, seed, **kw):
        return srv.client.chat.completions.create(model=srv.model_id, messages=chat_messages(),
                                                  max_tokens=10, temperature=1.2, seed=seed, n=n,
                                                  logprobs=True, **kw)
    r = ask(3, 42)
    assert [c.index for c in r.choices] == [0, 1, 2]
    # usage: the prompt once, the completions summed
    assert r.usage.completion_tokens == sum(len(c.logprobs.content) for c in r.choices)
    assert r.usage.prompt_tokens == ask(1, 42).usage.prompt_tokens
    # choice i is the request seeded seed + i
    for i, c in enumerate(r.choices):
        assert c.message.content == ask(1, 42 + i).choices[0].message.content
    assert len({c.message.content for c in r.choices}) > 1, "three identical choices"
    # streamed: every chunk names its choice; each choice's text as in the whole answer
    texts, finishes = {}, {}
    chunks = list(srv.client.chat.completions.create(model=srv.model_id, messages=chat_messages(),
                                                     max_tokens=10, temperature=1.2, seed=42, n=3,
                                                     stream=True, stream_options={"include_usage": True}))
    for ch in chunks:
        for c in ch.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert texts == {i: c.message.content for i, c in enumerate(r.choices)}
    assert sorted(finishes) == [0, 1, 2]
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    # completions too
    cr = srv.client.completions.create(model=srv.model_id, prompt=PROMPT, max_tokens=6, temperature=0, n=2)
    assert [c.index for c in cr.choices] == [0, 1] and cr.choices[0].text == cr.choices[1].text
    assert cr.usage.completion_tokens == 12


def test_penalties(srv):
    prompt = "one two one two one two"

    def ask(**kw):
        text = srv.client.completions.create(model=srv.model_id, prompt=prompt, max_tokens=24,
                                             temperature=0, extra_body={"ignore_eos": True},
                                             **kw).choices[0].text
        g = grpc_text(srv, prompt=prompt, max_tokens=24, temperature=0.0, ignore_eos=True, **kw)
        assert g.text == text
        return len(g.ids) - len(set(g.ids))  # tokens that repeat an earlier one of the answer

    plain = ask()
    assert plain >= 8  # the prompt invites repeating
    for kw in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}):
        assert ask(**kw) < plain / 2, kw
    # a negative penalty encourages repeating
    assert ask(presence_penalty=-2.0, frequency_penalty=-2.0) >= plain


def test_logit_bias(srv):
    base = srv.client.completions.create(model=srv.model_id, prompt=PROMPT, max_tokens=6, temperature=0,
                                         logprobs=0)
    g0 = grpc_text(srv, prompt=PROMPT, max_tokens=6, temperature=0.0)
    first = g0.ids[0]
    banned = srv.client.completions.create(model=srv.model_id, prompt=PROMPT, max_tokens=6,
                                           temperature=0, logit_bias={str(first): -100})
    gb = Stream(srv.stub, _with_bias(gen_request(prompt=PROMPT, max_tokens=6, temperature=0.0),
                                     {first: -100.0}), timeout=60).run()
    assert gb.ids[0] != first and first not in gb.ids, gb.describe()
    assert banned.choices[0].text == gb.text != base.choices[0].text
    # +100 forces one token at every step; its logprob (of the biased row) is ~0
    forced = srv.client.completions.create(model=srv.model_id, prompt=PROMPT, max_tokens=4,
                                           temperature=0.8, seed=1, logit_bias={"1000": 100},
                                           logprobs=1)
    lp = forced.choices[0].logprobs
    assert len(set(lp.tokens)) == 1 and all(x > -1e-3 for x in lp.token_logprobs), lp
    gf = Stream(srv.stub, _with_bias(gen_request(prompt=PROMPT, max_tokens=4, temperature=0.8, seed=1),
                                     {1000: 100.0}), timeout=60).run()
    assert gf.ids == [1000] * 4 and gf.text == forced.choices[0].text


def _with_bias(r, bias):
    for t, b in bias.items():
        r.sampling.logit_bias.add(token_id=t, bias=b)
    return r


def test_validation_is_the_grpc_one(srv):
    # the session's validation, as gRPC's INVALID_ARGUMENT gives it
    with pytest.raises(openai.BadRequestError) as e:
        srv.client.completions.create(model=srv.model_id, prompt=PROMPT, max_tokens=4, temperature=-1)
    g = Stream(srv.stub, gen_request(prompt=PROMPT, max_tokens=4, temperature=-1.0), timeout=30).run()
    assert g.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.body["message"] == g.details
    with pytest.raises(openai.BadRequestError) as e:
        srv.client.completions.create(model=srv.model_id, prompt=PROMPT, max_tokens=9000)
    assert "context" in e.value.body["message"]


def test_unknown_model(srv):
    for call in (lambda: srv.client.chat.completions.create(model="gpt-nope", messages=chat_messages()),
                 lambda: srv.client.completions.create(model="gpt-nope", prompt="hi", stream=True)):
        with pytest.raises(openai.NotFoundError) as e:
            call()
        assert e.value.status_code == 404 and "gpt-nope" in e.value.body["message"]
        assert e.value.body["param"] == "model"


def test_bad_http_input(srv):
    cases = [
        (b'{"prompt": "hi", ', 400),                      # malformed JSON
        (b'[1, 2, 3]', 400),                              # not an object
        (b'{"prompt": "\xff\xfe"}', 400),                 # invalid UTF-8
        (b'{"prompt": "a\\u0000b"}', 400),                # a NUL a C string cannot carry
        (b'{"prompt": "hi", "max_tokens": 1e400}', 400),  # a number no double holds
        (b'{"prompt": "hi", "max_tokens": 99999999999999999999999}', 400),
        (b'{"prompt": "hi", "seed": 1.5}', 400),
        (b'{"prompt": {}}', 400),
        (b'{}', 400),
    ]
    for body, want in cases:
        status, out = raw(srv, "POST", "/v1/completions", body)
        assert status == want, (body, status, out)
        error_of(status, out)
    status, out = raw(srv, "GET", "/v1/nothing-here")
    assert status == 404 and error_of(status, out)["code"] == "not_found"
    status, out = raw(srv, "GET", "/v1/completions")
    assert status == 405
    status, out = raw(srv, "POST", "/v1/completions", b'{"prompt": "' + b"x" * (9 << 20) + b'"}')
    assert status == 413, status
    error_of(status, out)
    # still serving
    assert srv.client.completions.create(model=srv.model_id, prompt=PROMPT, max_tokens=2).choices[0].text


def test_concurrent_streams_equal_alone(srv):
    prompts = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "The three primary colors are",
               "Hi", "Translate to French: I like apples.", "1, 2, 3, 4,", "The lighthouse keeper had lived"]
    alone = {p: srv.client.completions.create(model=srv.model_id, prompt=p, max_tokens=16, temperature=0)
             .choices[0].text for p in prompts}

    def one(i):
        def go():
            p = prompts[i % len(prompts)]
            s = srv.client.completions.create(model=srv.model_id, prompt=p, max_tokens=16, temperature=0,
                                              stream=True)
            return p, "".join(c.choices[0].text for c in s if c.choices)
        return go

    got = harness.run_parallel([one(i) for i in range(64)], timeout=600)
    assert len(got) == 64
    bad = [(p, t, alone[p]) for p, t in got if t != alone[p]]
    assert not bad, bad


def test_disconnect_cancels(srv):
    """A client that goes away mid-stream: its sequence leaves the worker well before max_tokens."""
    srv.wait_idle(30)
    c = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=60)
    c.request("POST", "/v1/completions", body=json.dumps({"prompt": PROMPT, "max_tokens": 4000, "ignore_eos": True,
                                                          "stream": True}),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200
    r.fp.readline()  # the first event is there: the request runs
    running = srv.group_stats()
    assert sum(s.n_running for s in running.values()) == 1, running
    before = sum(s.decode_tokens for s in running.values())
    c.sock.close()
    c.close()
    t0 = time.monotonic()
    srv.wait_idle(20)
    decoded = sum(s.decode_tokens for s in srv.group_stats().values()) - before
    assert decoded < 3000, "the worker went on for %d tokens after the client left" % decoded
    assert time.monotonic() - t0 < 20


def test_access_log(srv):
    # one access line per request in the coordinator's log, under the request's id: the id an
    # HTTP answer carries (chatcmpl-<request id>) finds its line, with its status and usage
    r = srv.client.chat.completions.create(model=srv.model_id, messages=chat_messages(), max_tokens=5,
                                           temperature=0)
    rid = r.id.split("-", 1)[1]
    with pytest.raises(openai.BadRequestError):
        srv.client.completions.create(model=srv.model_id, prompt=PROMPT, max_tokens=4, temperature=-1)
    line = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z coordinator\[\d+\] info: \[req ([^\]]+)\] "
                      r"access: ([A-Z_]+) in \d+ ms; prompt (\d+), completion (\d+) tokens(.*)$", re.M)

    def lines():
        return line.findall((srv.dir / "coordinator.log").read_text(errors="replace"))
    mine = harness.wait_for(lambda: [m for m in lines() if m[0] == rid], 10, what="the access line")
    assert mine == [(rid, "OK", str(r.usage.prompt_tokens), str(r.usage.completion_tokens), "")], mine
    assert any(m[1] == "INVALID_ARGUMENT" and "temperature" in m[4] for m in lines())
