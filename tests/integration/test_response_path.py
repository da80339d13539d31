"""The response path on ordinary prompts: answers whose first token adds no text (an empty answer,
the first bytes of a multi-byte character, end-of-generation under ignore_eos) once killed the
coordinator with SIGSEGV, and every stream on it. Then random prompts with max_tokens 1 to 4,
ignore_eos on and off, raw and chat: no process dies, and every streamed answer equals offline
`tessera generate`. And request_id: echoed whole up to its documented bound, refused beyond it.

TSR_RANDOM_PROMPTS sets how many random prompts (default 1000)."""

import os
import random

import grpc

import harness
from harness import Stream, check_against, gen_request, run_parallel

# Each trigger with what made it one.
TRIGGERS = [
    ("Tell me a joke.", 8, False),  # greedy answer is <|im_end|>: no text at all
    ("東京は日本の", 8, False),  # first token is the first bytes of a character
    ("Tell me a joke.", 8, True),  # end-of-generation first, and generation goes on past it
]

WORDS = ["the", "cat", "東京", "日本語", "😀", "🇫🇷", "naïve", "Ünïcödé", "def", "return", "\n", "  ", "1,", "2,",
         "<|im_end|>", "<|im_start|>", "assistant", "Tell me", "a joke.", "Москва", "مرحبا", "हिन्दी", "…", "é",
         "\t", "{", "}", "Q:", "A:", "<0x00>", "\\u0000", "the capital of", "?", "!"]


def pids(served):
    info = served.read_json()
    return {"coordinator": info["coordinator_pid"], **{w["id"]: w["pid"] for w in info["workers"]}}


def assert_nobody_died(served, before):
    after = pids(served)
    assert after == before, "processes restarted: before %s, after %s" % (before, after)
    for name, pid in after.items():
        assert harness.pid_alive(pid), "%s (pid %d) is not running" % (name, pid)
    err = served.err_path.read_bytes().decode(errors="replace")
    assert "killed by signal" not in err and "exited with status" not in err, err[-2000:]


def test_first_token_adds_no_text(served, offline):
    before = pids(served)
    for prompt, n, ignore_eos in TRIGGERS:
        ref = offline(prompt, max_tokens=n, ignore_eos=ignore_eos)
        s = Stream(served.stub, gen_request(prompt, n, ignore_eos=ignore_eos), timeout=60).run()
        problems = check_against(s, ref, n)
        assert not problems, "%r max_tokens %d ignore_eos %s: %s" % (prompt, n, ignore_eos, problems)
    # the first trigger really is an empty answer, the second really splits a character
    assert offline(TRIGGERS[0][0], max_tokens=8).text == ""
    assert_nobody_died(served, before)


def random_prompt(rng):
    n = rng.randint(1, 12)
    return "".join(rng.choice(WORDS) + rng.choice(["", " ", ""]) for _ in range(n)).strip() or "x"


def test_random_prompts(served, offline):
    rng = random.Random(20261206)
    n = int(os.environ.get("TSR_RANDOM_PROMPTS", "1000"))
    cases = [dict(prompt=random_prompt(rng), max_tokens=rng.randint(1, 4), ignore_eos=rng.random() < 0.5,
                  chat=rng.random() < 0.3) for _ in range(n)]
    before = pids(served)
    refs = offline.many(cases, parallel=2)

    def request(c):
        if c["chat"]:
            return gen_request(messages=[("user", c["prompt"])], max_tokens=c["max_tokens"],
                               ignore_eos=c["ignore_eos"])
        return gen_request(c["prompt"], c["max_tokens"], ignore_eos=c["ignore_eos"])

    bad = []
    for at in range(0, n, 8):
        batch = [Stream(served.stub, request(c), timeout=60) for c in cases[at:at + 8]]
        run_parallel([s.run for s in batch], timeout=120)
        for c, ref, s in zip(cases[at:at + 8], refs[at:at + 8], batch):
            problems = check_against(s, ref, c["max_tokens"])
            if problems:
                bad.append((c, problems))
    assert not bad, "%d of %d differ from offline; first: %s" % (len(bad), n, bad[:3])
    assert_nobody_died(served, before)
    print("%d random prompts equal offline; no process died" % n)


def test_request_id_bound(served):
    bound = 256  # docs/api.md; coordinator/validate.h TSR_MAX_REQUEST_ID_BYTES
    for rid in ("x" * bound, "é" * (bound // 2), "東" * (bound // 3)):
        s = Stream(served.stub, gen_request("Hello", 2, request_id=rid), timeout=60).run()
        assert s.code is None, s.describe()
        assert all(m.request_id == rid for m in s.msgs), "request_id not echoed whole"
    for rid in ("x" * (bound + 1), "é" * (bound // 2) + "x", "東" * (bound // 3 + 1)):
        s = Stream(served.stub, gen_request("Hello", 2, request_id=rid), timeout=60).run()
        assert s.code == grpc.StatusCode.INVALID_ARGUMENT, s.describe()
        assert "request_id" in s.details and str(bound) in s.details, s.details


def test_request_id_invalid_utf8(served, api):
    # Python's protobuf refuses to build such a string: the bytes go on the wire by hand
    # (field 11, request_id; field 2, prompt).
    raw = b"\x12\x05Hello" + b"\x5a\x03ab\xff"
    call = served.channel.unary_stream("/tessera.v1.Inference/Generate", request_serializer=None,
                                       response_deserializer=None)
    s = Stream(None, raw, timeout=60, method=call).run()
    assert s.code == grpc.StatusCode.INVALID_ARGUMENT and "request_id" in s.details, s.describe()
