"""Streams through `tessera serve --replicas 2`: many at once, equal to `tessera generate`, spread
over both replicas; plus the service's other methods (health, models, status, tokenize, chat)."""

import math

import grpc

import harness
from harness import PROMPTS, Stream, check_against, gen_request, run_parallel


def test_health(served, api):
    hp = api.health_pb
    for svc in ("", "tessera.v1.Inference"):
        r = served.health.Check(hp.HealthCheckRequest(service=svc), timeout=10)
        assert r.status == hp.HealthCheckResponse.SERVING, "Check(%r): %s" % (svc, r)
    try:
        r = served.health.Check(hp.HealthCheckRequest(service="no.such.Service"), timeout=10)
        raise AssertionError("Check of an unknown service answered %s, want NOT_FOUND" % r)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, (e.code(), e.details())
    call = served.health.Watch(hp.HealthCheckRequest(service=""), timeout=10)
    try:
        first = next(call)
        assert first.status == hp.HealthCheckResponse.SERVING, first
    finally:
        call.cancel()


def test_list_models(served, api, model_id):
    ms = served.stub.ListModels(api.pb.ListModelsRequest(), timeout=10).models
    assert len(ms) == 1
    m = ms[0]
    assert m.id == model_id and m.id
    assert m.context_length == harness.CONTEXT, m
    assert m.vocab_size == harness.VOCAB, m
    assert m.ready_replicas == 2, m


def test_cluster_status(served):
    st = served.status()
    assert st.model, st
    assert len(st.groups) == 2, st
    assert len({g.group for g in st.groups}) == 2, st
    for g in st.groups:
        assert g.ready and g.address, g
        assert g.HasField("stats"), g
        assert g.stats.n_blocks > 0 and 0 <= g.stats.n_free_blocks <= g.stats.n_blocks, g


def test_streams(served, api, offline, prompt_tokens):
    """64 concurrent greedy streams, 16 prompts x 4 lengths: each equals `tessera generate`."""
    jobs = []
    for i in range(64):
        prompt = PROMPTS[i % 16]
        max_tokens = 4 + (i % 16 * 5 + (i // 16) * 7) % 29  # 4..32, mixed per prompt
        jobs.append((prompt, max_tokens))
    refs = offline.many([dict(prompt=p, max_tokens=n) for p, n in jobs])
    ntok = {p: prompt_tokens(p) for p in set(PROMPTS)}
    before = served.group_stats()
    assert len(before) == 2, before

    streams = [Stream(served.stub, gen_request(p, n, request_id="streams-%d" % i), timeout=120)
               for i, (p, n) in enumerate(jobs)]
    run_parallel([s.run for s in streams], timeout=150)

    problems = []
    for i, (s, ref, (p, n)) in enumerate(zip(streams, refs, jobs)):
        for e in check_against(s, ref, n, prompt_tokens=ntok[p], request_id="streams-%d" % i):
            problems.append("request %d (prompt %r, max_tokens %d): %s" % (i, p[:40], n, e))
        if any(t != 2 and t != 0 for t in s.ids) and not s.text:
            problems.append("request %d: ids %s but no text" % (i, s.ids))
    assert not problems, "%d problems:\n%s" % (len(problems), "\n".join(problems[:30]))

    after = served.group_stats()
    worked = {g: after[g].decode_tokens - (before[g].decode_tokens if g in before else 0) for g in after}
    assert len(worked) == 2 and all(d > 0 for d in worked.values()), \
        "decode tokens per group during the test: %s (both replicas should get work)" % worked


def test_token_ids_input(served, api, offline):
    """token_ids from Tokenize give what the prompt gives; Tokenize's pieces line up with its ids."""
    prompt = PROMPTS[10]
    tk = served.stub.Tokenize(api.pb.TokenizeRequest(prompt=prompt), timeout=10)
    assert tk.token_ids and len(tk.pieces) == len(tk.token_ids), tk
    ref = offline(prompt=prompt, max_tokens=12)
    by_ids = Stream(served.stub, gen_request(token_ids=list(tk.token_ids), max_tokens=12), timeout=60).run()
    assert not check_against(by_ids, ref, 12, prompt_tokens=len(tk.token_ids)), by_ids.describe()
    ref_ids = offline(prompt_ids=list(tk.token_ids), max_tokens=12)
    assert ref_ids.ids == ref.ids, "generate --prompt-ids %s vs --prompt" % ref_ids


def test_chat_messages(served, api, offline):
    """messages use the chat template as `tessera generate --chat [--system]` does."""
    cases = [
        ([("user", "What is the capital of France?")], dict(prompt="What is the capital of France?", chat=True)),
        ([("system", "You are terse."), ("user", "What is 2+2?")],
         dict(prompt="What is 2+2?", chat=True, system="You are terse.")),
    ]
    for msgs, ref_args in cases:
        ref = offline(max_tokens=16, **ref_args)
        s = Stream(served.stub, gen_request(messages=msgs, max_tokens=16), timeout=60).run()
        p = check_against(s, ref, 16)
        assert not p, "messages %s: %s" % (msgs, p)
        tk = served.stub.Tokenize(api.pb.TokenizeRequest(messages=api.pb.ChatMessages(
            messages=[api.pb.ChatMessage(role=r, content=c) for r, c in msgs])), timeout=10)
        assert s.last.usage.prompt_tokens == len(tk.token_ids), (s.last.usage, len(tk.token_ids))


def test_logprobs(served, offline):
    prompt = PROMPTS[2]
    ref = offline(prompt=prompt, max_tokens=10)
    s = Stream(served.stub, _with_logprobs(prompt, 10), timeout=60).run()
    assert not check_against(s, ref, 10), s.describe()
    for m in s.msgs:
        assert len(m.logprobs) == len(m.token_ids), m
    assert len(s.logprobs) == len(s.ids)
    assert all(math.isfinite(x) and x <= 1e-4 for x in s.logprobs), s.logprobs
    plain = Stream(served.stub, gen_request(prompt, 10), timeout=60).run()
    assert not plain.logprobs, "logprobs not asked for but sent: %s" % plain.logprobs


def _with_logprobs(prompt, n):
    r = gen_request(prompt, n)
    r.logprobs = True
    return r


def test_ignore_eos(served, offline):
    prompt = PROMPTS[2]  # greedy answer ends with an end-of-generation token within 40
    ref = offline(prompt=prompt, max_tokens=40)
    assert ref.finish == "stop", "test premise: %r should stop early, offline: %s" % (prompt, ref)
    s = Stream(served.stub, gen_request(prompt, 40), timeout=60).run()
    assert not check_against(s, ref, 40), s.describe()
    ref2 = offline(prompt=prompt, max_tokens=40, ignore_eos=True)
    s2 = Stream(served.stub, gen_request(prompt, 40, ignore_eos=True), timeout=60).run()
    assert not check_against(s2, ref2, 40), s2.describe()
    assert s2.finish == "length" and len(s2.ids) == 40


def test_stop_string(served, offline):
    """The text ends before the first match of a stop string, with finish STOP."""
    prompt = PROMPTS[12]
    ref = offline(prompt=prompt, max_tokens=40, ignore_eos=True)
    words = [w for w in ref.text.split() if len(w) >= 4 and w.isalpha()]
    assert len(words) >= 3, "test premise: offline text has words: %r" % ref.text
    stop = words[2]
    want = ref.text[:ref.text.index(stop)]
    r = gen_request(prompt, 40, ignore_eos=True)
    r.stop.extend(["zq#never-matches#qz", stop])
    s = Stream(served.stub, r, timeout=60).run()
    assert s.code is None and s.error is None, s.describe()
    assert s.finish == "stop", s.describe()
    assert s.text == want, "stop %r: text %r, want %r" % (stop, s.text, want)
    assert s.ids == ref.ids[:len(s.ids)], "ids are not a prefix of offline: %s vs %s" % (s.ids, ref.ids)


def test_stop_token_ids(served, offline):
    """Generation ends at a stop id, which is returned."""
    prompt = PROMPTS[1]
    ref = offline(prompt=prompt, max_tokens=30, ignore_eos=True)
    stop_id = ref.ids[6]
    want = ref.ids[:ref.ids.index(stop_id) + 1]
    r = gen_request(prompt, 30, ignore_eos=True)
    r.stop_token_ids.append(stop_id)
    s = Stream(served.stub, r, timeout=60).run()
    assert s.code is None and s.error is None, s.describe()
    assert s.finish == "stop" and s.ids == want, "stop id %d: %s, want ids %s" % (stop_id, s.describe(), want)
    assert ref.text.startswith(s.text), (s.text, ref.text)


def test_seeded_sampling_is_reproducible(served):
    """Two identical seeded requests in the same batch give the same tokens."""
    def req():
        return gen_request(PROMPTS[1], 24, ignore_eos=True, temperature=0.9, top_p=0.9, seed=7)

    a, b = run_parallel([Stream(served.stub, req(), timeout=60).run, Stream(served.stub, req(), timeout=60).run],
                        timeout=90)
    assert a.code is None and b.code is None, (a.describe(), b.describe())
    assert a.finish == "length" and len(a.ids) == 24, a.describe()
    assert a.ids == b.ids and a.text == b.text, (a.describe(), b.describe())


def test_default_max_tokens(served, offline):
    """max_tokens unset means 128 (and sampling unset means greedy)."""
    prompt = PROMPTS[6]
    ref = offline(prompt=prompt, max_tokens=128, ignore_eos=True)
    s = Stream(served.stub, gen_request(prompt, ignore_eos=True), timeout=120).run()
    assert not check_against(s, ref, 128), s.describe()[:500]
    assert s.finish == "length" and len(s.ids) == 128, s.describe()[:500]
