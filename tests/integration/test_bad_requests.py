"""Every malformed request gets its status code and a message a person can act on; the boundary
values next to them are accepted; and the server still answers correctly afterwards."""

import grpc
import pytest

import harness
from harness import CONTEXT, VOCAB, Stream, check_against, gen_request

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


# -- protobuf wire format by hand, for what the Python API refuses to build (invalid UTF-8) --

def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(field, payload):
    """A length-delimited field (string, bytes, message)."""
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _base(**kw):
    return gen_request(max_tokens=4, **kw).SerializeToString()


BAD_UTF8 = b"caf\xc3 \xff\xfe ok"  # a cut 2-byte sequence, then bytes never valid in UTF-8

# GenerateRequest fields: prompt 2, messages 3 (ChatMessages: messages 1 -> ChatMessage: role 1,
# content 2), stop 7.
RAW = {
    "prompt_invalid_utf8": lambda: _base() + _ld(2, BAD_UTF8),
    "message_content_invalid_utf8": lambda: _base() + _ld(3, _ld(1, _ld(1, b"user") + _ld(2, BAD_UTF8))),
    "message_role_invalid_utf8": lambda: _base() + _ld(3, _ld(1, _ld(1, b"us\xffer") + _ld(2, b"hello"))),
    "stop_invalid_utf8": lambda: _base(prompt="Hello") + _ld(7, b"\xff"),
    "malformed_truncated_field": lambda: b"\x12\x10only-a-few",  # prompt says 16 bytes, has 10
    "malformed_bad_varint": lambda: b"\x30" + b"\xff" * 11,  # max_tokens varint never ends
    "malformed_wrong_wire_type": lambda: b"\x15\x01\x02\x03\x04",  # prompt (string) sent as fixed32
    "malformed_garbage": lambda: b"\xff\xff\xff\xff\xff\xff",
}


def _messages(*pairs):
    return dict(messages=list(pairs))


# name -> (request kwargs for gen_request, or a RAW key), expected code
CASES = {
    "temperature_negative": (dict(prompt="Hello", max_tokens=4, temperature=-0.5), INVALID),
    "temperature_nan": (dict(prompt="Hello", max_tokens=4, temperature=float("nan")), INVALID),
    "top_p_zero": (dict(prompt="Hello", max_tokens=4, top_p=0.0), INVALID),
    "top_p_negative": (dict(prompt="Hello", max_tokens=4, top_p=-0.5), INVALID),
    "top_p_over_one": (dict(prompt="Hello", max_tokens=4, top_p=1.5), INVALID),
    "top_k_negative": (dict(prompt="Hello", max_tokens=4, top_k=-1), INVALID),
    "min_p_negative": (dict(prompt="Hello", max_tokens=4, min_p=-0.1), INVALID),
    "min_p_one": (dict(prompt="Hello", max_tokens=4, min_p=1.0), INVALID),
    "repetition_penalty_zero": (dict(prompt="Hello", max_tokens=4, repetition_penalty=0.0), INVALID),
    "repetition_penalty_negative": (dict(prompt="Hello", max_tokens=4, repetition_penalty=-1.0), INVALID),
    "max_tokens_zero": (dict(prompt="Hello", max_tokens=0), INVALID),
    "max_tokens_negative": (dict(prompt="Hello", max_tokens=-3), INVALID),
    "max_tokens_over_context": (dict(prompt="Hello", max_tokens=1000000), INVALID),
    "max_tokens_just_over_context": (dict(token_ids=[1, 2, 3], max_tokens=CONTEXT - 2), INVALID),
    "prompt_over_context": (dict(prompt="hello " * 9000, max_tokens=1), INVALID),
    "token_ids_over_context": (dict(token_ids=[1] * CONTEXT, max_tokens=1), INVALID),
    "token_id_negative": (dict(token_ids=[1, -1, 2], max_tokens=4), INVALID),
    "token_id_vocab_size": (dict(token_ids=[1, VOCAB], max_tokens=4), INVALID),
    "token_id_int_max": (dict(token_ids=[2 ** 31 - 1], max_tokens=4), INVALID),
    "empty_prompt": (dict(prompt="", max_tokens=4), INVALID),
    "no_input": (dict(max_tokens=4), INVALID),
    "empty_token_ids": (dict(token_ids=[], max_tokens=4), INVALID),
    "empty_messages": (dict(messages=[], max_tokens=4), INVALID),
    "message_role_unknown": (dict(messages=[("robot", "beep")], max_tokens=4), INVALID),
    "message_role_unset": ("role_unset", INVALID),
    "model_unknown": (dict(prompt="Hello", max_tokens=4, model="no-such-model"), NOT_FOUND),
    "stop_strings_17": (dict(prompt="Hello", max_tokens=4, stop=["s%d" % i for i in range(17)]), INVALID),
    "stop_string_257_bytes": (dict(prompt="Hello", max_tokens=4, stop=["x" * 257]), INVALID),
    "stop_string_257_bytes_multibyte": (dict(prompt="Hello", max_tokens=4, stop=["é" * 128 + "x"]), INVALID),
    "stop_string_empty": (dict(prompt="Hello", max_tokens=4, stop=[""]), INVALID),
    "stop_token_id_negative": (dict(prompt="Hello", max_tokens=4, stop_token_ids=[-1]), INVALID),
    "stop_token_id_vocab_size": (dict(prompt="Hello", max_tokens=4, stop_token_ids=[VOCAB]), INVALID),
    "prompt_over_1mib": (dict(prompt="a" * (1 << 20) + "a", max_tokens=4), INVALID),
}
CASES.update({name: (name, INVALID) for name in RAW})


def _build(spec):
    """GenerateRequest or raw bytes for a case."""
    if isinstance(spec, str):
        if spec == "role_unset":
            r = gen_request(max_tokens=4)
            r.messages.messages.add(content="hello")
            return r
        return RAW[spec]()
    kw = dict(spec)
    model = kw.pop("model", None)
    stop = kw.pop("stop", None)
    stop_ids = kw.pop("stop_token_ids", None)
    msgs = kw.pop("messages", None)
    r = gen_request(messages=msgs, **kw)
    if stop_ids:
        r.stop_token_ids.extend(stop_ids)
    if model is not None:
        r.model = model
    if stop is not None:
        r.stop.extend(stop)
    return r


@pytest.fixture(scope="module")
def raw_generate(served):
    return served.channel.unary_stream("/tessera.v1.Inference/Generate")  # bytes in, bytes out


@pytest.mark.parametrize("name", list(CASES))
def test_bad_request(name, served, raw_generate):
    spec, want = CASES[name]
    req = _build(spec)
    if isinstance(req, bytes):
        s = Stream(None, req, timeout=30, method=raw_generate).run()
    else:
        s = Stream(served.stub, req, timeout=30).run()
    assert s.error is None, "%s: %r" % (name, s.error)
    assert s.code is not None, "%s: accepted (%d messages, %d ids, finish %s), want %s" % (
        name, len(s.msgs), len(s.ids), s.finish, want)
    assert s.code == want, "%s: got %s (%r), want %s" % (name, s.code, s.details, want)
    assert s.details.strip(), "%s: %s with an empty message" % (name, s.code)
    assert not s.msgs, "%s: %d messages before the error" % (name, len(s.msgs))
    assert s.t_end - s.t_start < 20, "%s: took %.1f s to refuse" % (name, s.t_end - s.t_start)


GOOD = {
    "temperature_zero": dict(temperature=0.0),
    "top_p_one": dict(top_p=1.0),
    "top_k_zero": dict(top_k=0),
    "min_p_zero": dict(min_p=0.0),
    "min_p_just_below_one": dict(min_p=0.99),
    "repetition_penalty_small": dict(repetition_penalty=0.01),
    "max_tokens_one": dict(max_tokens=1),
    "stop_strings_16": dict(stop=["zq%d" % i for i in range(16)]),
    "stop_string_256_bytes": dict(stop=["x" * 256]),
    "token_id_vocab_max": dict(token_ids=[1, VOCAB - 1]),
    "model_served": dict(model=None),
}


@pytest.mark.parametrize("name", list(GOOD))
def test_boundary_value_accepted(name, served, model_id):
    kw = dict(GOOD[name])
    stop = kw.pop("stop", None)
    has_model = "model" in kw
    kw.pop("model", None)
    kw.setdefault("max_tokens", 2)
    if "token_ids" not in kw:
        kw.setdefault("prompt", "Hello")
    r = gen_request(**kw)
    if stop:
        r.stop.extend(stop)
    if has_model:
        r.model = model_id
    s = Stream(served.stub, r, timeout=60).run()
    assert s.code is None and s.error is None, "%s refused: %s" % (name, s.describe())
    assert s.finish in ("stop", "length") and 1 <= len(s.ids) <= kw["max_tokens"], s.describe()


def test_still_serves_after_bad_requests(served, offline):
    prompt = harness.PROMPTS[3]
    ref = offline(prompt=prompt, max_tokens=16)
    s = Stream(served.stub, gen_request(prompt, 16), timeout=60).run()
    assert not check_against(s, ref, 16), s.describe()
    # and the bad requests left nothing behind in the replicas
    served.wait_idle(timeout=10)
