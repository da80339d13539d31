"""`tessera client`: the command-line client against the shared serve, and against nothing."""

import subprocess
import time

import harness


def _run(tessera_bin, *args, timeout=60):
    t = time.monotonic()
    r = subprocess.run([str(tessera_bin), "client"] + list(args), capture_output=True, timeout=timeout)
    return r, time.monotonic() - t


def test_client_prompt(tessera_bin, served, offline):
    prompt = harness.PROMPTS[2]
    ref = offline(prompt=prompt, max_tokens=8)
    r, _ = _run(tessera_bin, "--address", served.address, "--prompt", prompt, "--max-tokens", "8")
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode == 0, "exit %d\nstdout %r\nstderr %r" % (r.returncode, out, r.stderr.decode(errors="replace"))
    assert out in (ref.text, ref.text + "\n"), "client printed %r, generate printed %r" % (out, ref.text)


def test_client_list_models(tessera_bin, served, model_id):
    r, _ = _run(tessera_bin, "--address", served.address, "--list-models")
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode == 0, "exit %d: %r %r" % (r.returncode, out, r.stderr)
    assert model_id in out, "--list-models printed %r, the model is %r" % (out, model_id)


def test_client_nothing_listening(tessera_bin):
    port = harness.free_port()  # bound and closed again: nothing listens there
    r, took = _run(tessera_bin, "--address", "127.0.0.1:%d" % port, "--prompt", "Hello", "--max-tokens", "4",
                   timeout=30)
    both = (r.stdout + r.stderr).decode("utf-8", "replace")
    assert r.returncode != 0, "exit 0 with nothing listening: %r" % both
    assert "UNAVAILABLE" in both, "no UNAVAILABLE in %r" % both
    assert took < 10, "took %.1f s to give up" % took


def test_client_prompt_ids(tessera_bin, served, offline):
    """--prompt-ids (token ids, as for synthetic models) gives generate --prompt-ids's tokens."""
    ids = [1, 504, 3458, 282, 4649, 314]
    ref = offline(prompt_ids=ids, max_tokens=8)
    r, _ = _run(tessera_bin, "--address", served.address, "--prompt-ids", ",".join(map(str, ids)),
                "--max-tokens", "8", "--show-ids")
    lines = r.stdout.decode("utf-8", "replace").rstrip("\n").split("\n")
    assert r.returncode == 0, "exit %d: %r %r" % (r.returncode, lines, r.stderr)
    assert lines[-1] == ",".join(map(str, ref.ids)), "client ids %r, generate's %r" % (lines[-1], ref.ids)
    r, _ = _run(tessera_bin, "--address", served.address, "--prompt-ids", "1,x")
    assert r.returncode == 2 and b"--prompt-ids" in r.stderr, (r.returncode, r.stderr)


def test_client_sampling_fields(tessera_bin, served):
    """The API's newer fields reach the server from the command line: a +100 logit bias forces its
    token at every step, --top-logprobs prints that many alternatives per token, --stop-ids ends at a stop id, and the server's checks answer a bad value."""
    forced = 504
    r, _ = _run(tessera_bin, "--address", served.address, "--prompt", "Hello", "--max-tokens", "4",
                "--ignore-eos", "--logit-bias", "%d:100" % forced, "--top-logprobs", "3", "--show-ids",
                "--presence-penalty", "0.5", "--frequency-penalty", "0.5", "--request-id", "cli-1")
    out, err = r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")
    assert r.returncode == 0, "exit %d: %r %r" % (r.returncode, out, err)
    assert out.rstrip("\n").split("\n")[-1] == ",".join([str(forced)] * 4), out
    tokens = [t for t in err.split("[")[1:]]
    assert len(tokens) == 4, err
    for t in tokens:
        head, _, alts = t.partition(" | ")
        alts = alts.split("]")[0].split()
        assert head.split()[0] == str(forced) and len(alts) == 3, t
        assert all(int(a.split(":")[0]) >= 0 and float(a.split(":")[1]) <= 0 for a in alts), t
    r, _ = _run(tessera_bin, "--address", served.address, "--prompt", "Hello", "--max-tokens", "8",
                "--logit-bias", "%d:100" % forced, "--stop-ids", str(forced), "--show-ids")
    assert r.returncode == 0 and r.stdout.decode().rstrip("\n").split("\n")[-1] == str(forced), r
    r, _ = _run(tessera_bin, "--address", served.address, "--prompt", "Hello", "--presence-penalty", "3")
    assert r.returncode == 1 and b"INVALID_ARGUMENT" in r.stderr and b"presence_penalty" in r.stderr, r
    r, _ = _run(tessera_bin, "--address", served.address, "--prompt", "Hello", "--logit-bias", "5")
    assert r.returncode == 2 and b"--logit-bias" in r.stderr, r
