#!/usr/bin/env python3
"""Measure llama.cpp (via llama-cpp-python) prompt-eval and decode speed on CPU.

Usage:
    /opt/oracle/bin/python tests/reference/bench_llamacpp.py \
        --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --prompt-tokens 128 --gen-tokens 64 --threads 2 --repeats 5

Prints one line of JSON:
    {"prompt_tps": ..., "decode_tps": ..., "n_threads": T, "llama_cpp_python": "..."}

Method: the prompt is a fixed sequence of ordinary token ids (no BOS), evaluated
in one llama_decode batch (n_batch = n_ubatch >= prompt tokens); decode is
greedy argmax, one token per llama_decode, with logits only for the last token
(logits_all=False), F32 KV cache, flash attention off.  Each repeat clears the
KV cache first.  One warmup repeat is done and discarded; reported numbers are
medians over --repeats of (tokens / seconds) measured with time.perf_counter.
"""
import argparse
import inspect
import json
import os
import statistics
import sys
import time

import numpy as np

import llama_cpp
from llama_cpp import Llama

TEXT = ("The quick brown fox jumps over the lazy dog while the engineers measure "
        "how fast a small language model can read and write text on a modest CPU. ")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--kv-type", type=int, default=0, help="GGML type of the KV cache (0=F32, 1=F16)")
    args = ap.parse_args()

    n_ctx = max(512, args.prompt_tokens + args.gen_tokens + 16)
    n_batch = max(512, args.prompt_tokens)
    kw = dict(model_path=args.model, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
              n_threads=args.threads, n_threads_batch=args.threads, n_gpu_layers=0,
              logits_all=False, verbose=False, type_k=args.kv_type, type_v=args.kv_type,
              flash_attn=False, flash_attn_type=0)
    sig = inspect.signature(Llama.__init__).parameters
    kw = {k: v for k, v in kw.items() if k in sig}
    llm = Llama(**kw)

    ids = llm.tokenize(TEXT.encode(), add_bos=False, special=False)
    prompt = (ids * (args.prompt_tokens // len(ids) + 1))[:args.prompt_tokens]

    ctx = llm.ctx
    n_vocab = llm.n_vocab()

    def clear():
        llm.reset()
        llm._ctx.kv_cache_clear() if hasattr(llm._ctx, "kv_cache_clear") else \
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)

    def run_once():
        clear()
        t0 = time.perf_counter()
        llm.eval(prompt)
        t1 = time.perf_counter()
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
        tok = int(np.argmax(logits))
        t2 = time.perf_counter()
        for _ in range(args.gen_tokens):
            llm.eval([tok])
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
            tok = int(np.argmax(logits))
        t3 = time.perf_counter()
        return len(prompt) / (t1 - t0), args.gen_tokens / (t3 - t2)

    run_once()  # warmup
    pp, tg = [], []
    for _ in range(args.repeats):
        a, b = run_once()
        pp.append(a)
        tg.append(b)
    print(json.dumps({
        "prompt_tps": round(statistics.median(pp), 2),
        "decode_tps": round(statistics.median(tg), 2),
        "n_threads": args.threads,
        "llama_cpp_python": llama_cpp.__version__,
        "prompt_tokens": len(prompt),
        "gen_tokens": args.gen_tokens,
        "repeats": args.repeats,
        "kv_type": args.kv_type,
        # load average when finished: on a shared machine, numbers taken under
        # load > cores are pessimistic (esp. decode: many thread barriers/token)
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "ncpu": os.cpu_count(),
    }))


if __name__ == "__main__":
    sys.exit(main())
