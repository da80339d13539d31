#!/usr/bin/env python3
"""tessera's perplexity on k-quant files against llama.cpp's, by hand (not in CI).

Requantizes the default model (models/SmolLM2-135M-Instruct.Q4_1.gguf) with llama.cpp
(llama_cpp.llama_model_quantize, allow_requantize) to Q4_K_M, Q5_K_M and Q6_K in a temporary
directory: at SmolLM2's width of 576, not whole 256-weight super-blocks, llama.cpp stores most
matrices of those files in Q5_0, Q5_1 or Q8_0, so they exercise those types as well. Tokenizes
/usr/share/common-licenses/GPL-3 with the model's tokenizer (llama.cpp's, no BOS) and takes the
first --tokens ids (2,048), then computes the perplexity of each file, and of the Q4_1 original as
a baseline, both ways with the same rule (`tessera bench --perplexity`, tools/bench.c): chunks of
--ctx tokens (512), each from an empty cache, the NLL of token t + 1 given tokens 0..t for
C/2 <= t < C - 1, from a float64 log-softmax of each logit row. llama.cpp evaluates a chunk in
one batch with logits for every position (logits_all) after clearing its cache, with an F32 KV
cache as tessera's (llama-cpp-python's default F16 cache moves its perplexity by ~0.1%). Prints a
table;
exits 1 when any file's two perplexities differ by more than --tolerance (1%).

    python3 -m venv /opt/oracle && /opt/oracle/bin/pip install llama-cpp-python numpy gguf
    /opt/oracle/bin/python tests/reference/kquant_perplexity.py [--tessera build/tessera]
"""
import argparse
import collections
import ctypes
import json
import math
import os
import subprocess
import sys
import tempfile

import llama_cpp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
TEXT = "/usr/share/common-licenses/GPL-3"
FTYPES = [("Q4_K_M", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M),
          ("Q5_K_M", llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M),
          ("Q6_K", llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K)]


def quantize(src, dst, ftype, threads):
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = ftype
    p.allow_requantize = True
    p.nthread = threads
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p))
    if rc != 0:
        sys.exit(f"llama_model_quantize {src} -> {dst}: {rc}")


def tensor_types(path):
    """'Q5_0 x 120, Q4_K x 60, ...' of a GGUF file (gguf-py), most frequent first."""
    try:
        from gguf import GGUFReader
    except ImportError:
        return "?"
    n = collections.Counter(t.tensor_type.name for t in GGUFReader(path).tensors)
    return ", ".join(f"{k} x {v}" for k, v in n.most_common())


def tokenize(threads, n):
    llm = llama_cpp.Llama(MODEL, n_ctx=512, vocab_only=True, verbose=False, n_threads=threads)
    with open(TEXT, "rb") as f:
        ids = llm.tokenize(f.read(), add_bos=False, special=False)
    if len(ids) < n:
        sys.exit(f"{TEXT} gives {len(ids)} tokens, fewer than {n}")
    return ids[:n]


def nll_rows(logits, ids, first, c):
    """Sum over t in [first, c - 1) of -log softmax(logits[t])[ids[t + 1]], in float64."""
    total = 0.0
    for t in range(first, c - 1):
        x = logits[t].astype(np.float64)
        m = x.max()
        total += m + math.log(np.exp(x - m).sum()) - x[ids[t + 1]]
    return total


def llama_ppl(path, ids, c, threads):
    llm = llama_cpp.Llama(path, n_ctx=c, n_batch=c, n_ubatch=c, logits_all=True, verbose=False,
                          n_threads=threads, n_threads_batch=threads,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    chunks, total = len(ids) // c, 0.0
    for k in range(chunks):
        chunk = ids[k * c:(k + 1) * c]
        llm.reset()  # n_tokens = 0: eval first removes the cache's positions from 0 on
        llm.eval(chunk)
        logits = np.array(llm.scores[:c], dtype=np.float32)
        total += nll_rows(logits, chunk, c // 2, c)
    scored = chunks * (c - c // 2 - 1)
    del llm
    return math.exp(total / scored), scored


def tessera_ppl(binary, path, ids_file, c, threads):
    out = subprocess.run([binary, "bench", "--model", path, "--threads", str(threads),
                          "--perplexity", ids_file, "--ctx", str(c)],
                         check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return r["ppl"], r["tokens_scored"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tessera", default=os.path.join(ROOT, "build", "tessera"))
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tolerance", type=float, default=0.01)
    ap.add_argument("--workdir", help="where the quantized files go (default: a temporary one)")
    a = ap.parse_args()

    ids = tokenize(a.threads, a.tokens)
    with tempfile.TemporaryDirectory(prefix="tsr_kquant_ppl_", dir="/tmp") as tmp:
        work = a.workdir or tmp
        ids_file = os.path.join(work, "gpl3.ids")
        with open(ids_file, "w") as f:
            f.write(" ".join(map(str, ids)) + "\n")
        files = [("Q4_1 (original)", MODEL)]
        for name, ft in FTYPES:
            dst = os.path.join(work, f"SmolLM2-135M-Instruct.{name}.gguf")
            if not os.path.exists(dst):
                quantize(MODEL, dst, ft, a.threads)
            files.append((name, dst))

        print(f"{len(ids)} tokens of {TEXT}, chunks of {a.ctx}, "
              f"{len(ids) // a.ctx * (a.ctx - a.ctx // 2 - 1)} scored\n")
        print("| file | tensor types | llama.cpp ppl | tessera ppl | relative difference |")
        print("| --- | --- | ---: | ---: | ---: |")
        worst = 0.0
        for name, path in files:
            ref, n_ref = llama_ppl(path, ids, a.ctx, a.threads)
            got, n_got = tessera_ppl(a.tessera, path, ids_file, a.ctx, a.threads)
            if n_ref != n_got:
                sys.exit(f"{name}: llama.cpp scored {n_ref} tokens, tessera {n_got}")
            rel = abs(got - ref) / ref
            worst = max(worst, rel)
            print(f"| {name} | {tensor_types(path)} | {ref:.4f} | {got:.4f} | {rel * 100:.3f}% |",
                  flush=True)
    if worst > a.tolerance:
        print(f"\nFAIL: a relative difference of {worst * 100:.3f}% is over "
              f"{a.tolerance * 100:.1f}%")
        return 1
    print(f"\nok: every file within {a.tolerance * 100:.1f}% (worst {worst * 100:.3f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
