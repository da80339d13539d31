"""Strings are bytes on the wire: a NUL inside a prompt, a message or a stop string must not
silently cut it short (protobuf-c hands C strings over). Refusing it with INVALID_ARGUMENT is
fine; using the whole string is fine; dropping what follows the NUL is not."""

import grpc

from harness import Stream, gen_request


def _refused_or_whole(s, what, short_tokens):
    if s.code is not None:
        assert s.code == grpc.StatusCode.INVALID_ARGUMENT and s.details.strip(), "%s: %s" % (what, s.describe())
        return
    assert s.error is None and s.msgs, s.describe()
    got = s.last.usage.prompt_tokens
    assert got > short_tokens, "%s: prompt_tokens %d, as if the text ended at the NUL (%d)" % (
        what, got, short_tokens)


def test_nul_in_prompt(served):
    short = Stream(served.stub, gen_request("Hello", 4), timeout=60).run()
    assert short.code is None, short.describe()
    s = Stream(served.stub, gen_request("Hello\x00 world, how are you today?", 4), timeout=60).run()
    _refused_or_whole(s, "prompt 'Hello\\0 world, ...'", short.last.usage.prompt_tokens)


def test_nul_in_message(served):
    short = Stream(served.stub, gen_request(messages=[("user", "Hello")], max_tokens=4), timeout=60).run()
    assert short.code is None, short.describe()
    s = Stream(served.stub, gen_request(messages=[("user", "Hello\x00 world, how are you today?")], max_tokens=4),
               timeout=60).run()
    _refused_or_whole(s, "message content 'Hello\\0 world, ...'", short.last.usage.prompt_tokens)


def test_nul_in_stop_string(served):
    # "\0x": cut at the NUL it would be "", which the server refuses as empty: the message must
    # not claim the string is empty when it is not.
    r = gen_request("Hello", 4)
    r.stop.append("\x00x")
    s = Stream(served.stub, r, timeout=60).run()
    if s.code is not None:
        assert s.code == grpc.StatusCode.INVALID_ARGUMENT and s.details.strip(), s.describe()
        assert "empty" not in s.details, "stop '\\0x' refused as %r: it is 2 bytes, not empty" % s.details
    else:
        assert s.finish in ("stop", "length"), s.describe()
