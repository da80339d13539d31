#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_response from real model outputs: the default model's answers
(greedy and sampled, raw and chat, Japanese and emoji, so multi-byte characters split across
tokens), each with stop strings cut from its own decoded text so that they straddle token
boundaries. The input format is fuzz_response.c's: a flags byte, stop strings, then 3 bytes a
token (a mode byte, a little-endian u16 id). Needs a built tessera and the default model:

    python3 tests/fuzz/make_response_seeds.py [build/tessera]
"""
import os
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(HERE, "corpus", "fuzz_response")

RUNS = [
    ("Tell me a joke.", ["--chat"]),
    ("東京は日本の", []),
    ("Write a haiku about mosaics", ["--chat"]),
    ("List three emoji that mean happy:", ["--chat", "--temperature", "0.9", "--seed", "3"]),
    ("def fibonacci(n):", []),
    ("Translate to Japanese: good morning", ["--chat", "--temperature", "0.7", "--seed", "11"]),
    ("Count: 1, 2,", ["--ignore-eos"]),
]


def generate(tessera, prompt, extra):
    r = subprocess.run([tessera, "generate", "--prompt", prompt, "--max-tokens", "48", "--show-ids",
                        "--threads", "2"] + extra, capture_output=True, timeout=300, cwd=REPO)
    if r.returncode != 0:
        sys.exit("generate failed: %s" % r.stderr.decode(errors="replace"))
    lines = r.stdout.rstrip(b"\n").split(b"\n")
    ids = [int(x) for x in lines[-1].split(b",") if x.strip()]
    text = b"\n".join(lines[:-1])
    return ids, text


def seed(ids, stops, finish_length=False, eog_last=True, chunking=0):
    flags = len(stops) | (4 if finish_length else 0) | (8 if eog_last else 0) | (chunking << 4)
    out = bytes([flags])
    for s in stops:
        out += bytes([0x80 | len(s)]) + s
    for i, t in enumerate(ids):
        mode = 1 | (((i * 7) & 3) << 2)  # mode & 3 != 0: the id as it is
        out += bytes([mode]) + struct.pack("<H", t)
    return out


def main():
    tessera = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "build", "tessera")
    os.makedirs(OUT, exist_ok=True)
    n = 0
    for prompt, extra in RUNS:
        ids, text = generate(tessera, prompt, extra)
        stops = []
        for at in (len(text) // 3, len(text) // 2):
            s = text[at:at + 6]
            while s and (s[0] & 0xC0) == 0x80:  # whole characters only
                s = s[1:]
            try:
                s.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if s and len(s) <= 15:
                stops.append(s)
        variants = [seed(ids, [], chunking=0), seed(ids, stops[:1], chunking=1),
                    seed(ids, stops[:2], finish_length=True, eog_last=False, chunking=2)]
        for v in variants:
            with open(os.path.join(OUT, "real%02d.bin" % n), "wb") as f:
                f.write(v)
            n += 1
    print("wrote %d seeds to %s" % (n, OUT))


if __name__ == "__main__":
    main()
