#!/usr/bin/env python3
"""Generate forward-pass goldens for tessera from llama.cpp (via llama-cpp-python).

Regenerate (from the repo root; needs the oracle venv with llama-cpp-python):

    /opt/oracle/bin/python tests/reference/make_forward_golden.py \
        --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out tests/reference/forward_golden_smollm2.json \
        --rows tests/reference/forward_golden_smollm2_rows.bin

Oracle versions used for the committed goldens are recorded in the JSON under
"meta" (llama_cpp_python version, llama.cpp system info).  Committed goldens:
llama-cpp-python 0.3.36 (pip sdist, built from source: CPU backend only, GCC 12,
OpenMP, ggml runtime CPU features AVX2/AVX512/VNNI, REPACK and LLAMAFILE on),
numpy 2.4.6, Python 3.11.7, x86_64 AMD EPYC.  The output was checked to be
bit-identical across reruns and with --threads 1.

What is produced
----------------
For each prompt (token ids exactly as llama.cpp tokenized them, no BOS because
tokenizer.ggml.add_bos_token = false; special tokens such as <|im_start|> are
parsed):

* teacher-forced pass: the whole prompt is evaluated in ONE llama_decode batch
  (n_batch = n_ubatch = 512 >= prompt length) with logits for every position.
  For every position p (logits predicting token p+1) we store argmax, the
  top1 - top2 logit margin, and the top-16 (id, logit) pairs (logits rounded to
  5 decimals).  Full 49152-float logits rows at 3 positions (first, middle,
  last) go to the little-endian float32 file --rows; "rows_index" in the JSON
  gives (prompt index, position, byte offset) of each row, in file order.
* greedy continuation: after the prompt, 64 tokens are produced by pure argmax
  of the last logits (no sampler, no repetition penalty, no temperature), each
  fed back through a single-token llama_decode.  Per step we store the chosen
  id, the margin and the top-16 of the logits that chose it.  Argmax ties are
  broken towards the lowest token id (numpy argmax); EOS does not stop
  generation (all 64 steps are always produced).

The KV cache is F32 (type_k = type_v = GGML_TYPE_F32 = 0) and flash attention
is off, so the cache adds no rounding of its own.  Note that llama.cpp still
quantizes activations to Q8_1/Q8_0 inside the Q4_1 / Q8_0 matmuls (the output
projection is tied to token_embd, which is Q8_0), so an fp32-activation engine
will differ from these logits by small amounts.
"""
import argparse
import json
import os
import platform
import struct
import sys
import time

import numpy as np

import llama_cpp
from llama_cpp import Llama

TOPK = 16
N_GEN = 64
NEAR_TIE = 0.05

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

PROMPTS = [
    {
        "name": "short_story",
        "text": "Once upon a time, in a small village by the sea, there lived a young girl named Lila",
    },
    {
        "name": "english_prose",
        "text": "The old lighthouse stood at the edge of the cliff, its white paint "
                "peeling after decades of salt wind. Every evening the keeper climbed "
                "the spiral stairs to light the lamp,",
    },
    {
        "name": "chat_chatml",
        # SmolLM2's chat template inserts this default system turn when the
        # first message is not a system message.
        "text": "<|im_start|>system\n" + SYSTEM + "<|im_end|>\n"
                "<|im_start|>user\nWhat are three good reasons to learn a second "
                "language? Please keep the answer short.<|im_end|>\n"
                "<|im_start|>assistant\n",
    },
    {
        "name": "code_c",
        "text": "#include <stdio.h>\n\n"
                "/* Return the n-th Fibonacci number, iteratively. */\n"
                "static unsigned long fib(unsigned n)\n{\n"
                "    unsigned long a = 0, b = 1;\n"
                "    for (unsigned i = 0; i < n; i++) {\n"
                "        unsigned long t = a + b;\n"
                "        a = b;\n"
                "        b = t;\n"
                "    }\n"
                "    return a;\n}\n\n"
                "int main(void)\n{\n"
                "    for (unsigned i = 0; i < 10; i++)\n"
                "        printf(\"%u: %lu\\n\", i, fib(i));\n",
    },
    {
        "name": "number_list",
        "text": "Prime numbers: 2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, "
                "47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97, 101, 103, 107, 109, 113,",
    },
    {
        "name": "multilingual",
        "text": "Bonjour, je m'appelle Marie et j'habite à Paris. "
                "Hola, ¿cómo estás? Ich möchte einen Kaffee, bitte. "
                "東京は日本の首都です。 Привет, как дела?",
    },
    {
        "name": "long_prose",
        "text": (
            "In the early days of computing, memory was so scarce that programmers "
            "counted every byte. A single kilobyte of core memory was woven by hand "
            "from tiny ferrite rings threaded on copper wire, and a machine with a few "
            "thousand words of storage filled an entire room. Engineers wrote programs "
            "directly in machine code, toggling switches on the front panel or punching "
            "holes into paper tape. Over the following decades, transistors replaced "
            "vacuum tubes, integrated circuits replaced discrete transistors, and the "
            "cost of memory fell by many orders of magnitude. Today a phone in your "
            "pocket holds billions of bytes, yet the habits formed in that era of "
            "scarcity still shape how systems programmers think about data layout, "
            "caches, and the hidden cost of every allocation. When a modern engineer "
            "designs an inference engine for large language models, the same questions "
            "return in a new form: where do the weights live, how many times are they "
            "read from memory for each token, and"
        ),
    },
]


def topk_of(row, k=TOPK):
    idx = np.argpartition(-row, k)[:k]
    # sort by logit desc, then id asc for determinism
    order = sorted(idx.tolist(), key=lambda i: (-float(row[i]), i))
    return order


def summarize(row):
    row = np.asarray(row, dtype=np.float32)
    order = topk_of(row)
    top1 = int(np.argmax(row))
    assert row[top1] == row[order[0]]
    margin = float(row[order[0]]) - float(row[order[1]])
    return {
        "argmax": top1,
        "margin": round(margin, 6),
        "topk": [[int(i), round(float(row[i]), 5)] for i in order],
    }


def make_llama(model, n_ctx, n_threads):
    kw = dict(
        model_path=model,
        n_ctx=n_ctx,
        n_batch=512,
        n_ubatch=512,
        n_threads=n_threads,
        n_threads_batch=n_threads,
        n_gpu_layers=0,
        logits_all=True,
        seed=0,
        verbose=False,
        type_k=0,  # GGML_TYPE_F32
        type_v=0,  # GGML_TYPE_F32
    )
    # flash_attn=False -> context_params.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED
    kw["flash_attn"] = False
    return Llama(**kw), kw


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", default="tests/reference/forward_golden_smollm2.json")
    ap.add_argument("--rows", default="tests/reference/forward_golden_smollm2_rows.bin")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=512)
    args = ap.parse_args()

    llm, kw = make_llama(args.model, args.n_ctx, args.threads)
    n_vocab = llm.n_vocab()

    # verify the context really was created with what we asked for
    cparams = llm.context_params
    settings = {k: v for k, v in kw.items() if k not in ("model_path",)}
    settings.update({
        "ctx.n_ctx": int(cparams.n_ctx),
        "ctx.n_batch": int(cparams.n_batch),
        "ctx.n_ubatch": int(cparams.n_ubatch),
        "ctx.type_k": int(cparams.type_k),
        "ctx.type_v": int(cparams.type_v),
        "ctx.n_threads": int(cparams.n_threads),
        "ctx.n_threads_batch": int(cparams.n_threads_batch),
        "add_bos": False,
        "tokenize_special": True,
        "topk": TOPK,
        "n_gen": N_GEN,
        "greedy": "argmax of raw logits, ties -> lowest id, no penalties, EOS not stopping",
        "teacher_forced": "whole prompt in one llama_decode batch, logits for every position",
        "greedy_decode": "one token per llama_decode after the prompt batch",
    })
    for attr in ("flash_attn", "flash_attn_type"):
        if hasattr(cparams, attr):
            settings["ctx." + attr] = int(getattr(cparams, attr))

    try:
        sysinfo = llama_cpp.llama_print_system_info().decode()
    except Exception:  # pragma: no cover
        sysinfo = None

    meta = {
        "model": os.path.basename(args.model),
        "model_bytes": os.path.getsize(args.model),
        "n_vocab": n_vocab,
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp_system_info": sysinfo,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": settings,
        "rows_file": os.path.basename(args.rows),
        "rows_format": "little-endian float32, n_vocab floats per row, rows in rows_index order",
        "logit_rounding": 5,
        "near_tie_threshold": NEAR_TIE,
    }

    prompts_out = []
    rows_index = []
    near_ties = []
    rowf = open(args.rows, "wb")
    offset = 0
    for pi, p in enumerate(PROMPTS):
        toks = llm.tokenize(p["text"].encode("utf-8"), add_bos=False, special=True)
        n = len(toks)
        assert n + N_GEN <= args.n_ctx and n <= 512, n
        llm.reset()
        llm._ctx.kv_cache_clear()
        llm.eval(toks)
        scores = np.array(llm.scores[:n], dtype=np.float32)  # [n, vocab]
        positions = []
        for pos in range(n):
            s = summarize(scores[pos])
            s["pos"] = pos
            positions.append(s)
            if s["margin"] < NEAR_TIE:
                near_ties.append({"prompt": pi, "name": p["name"], "kind": "teacher_forced",
                                  "pos": pos, "margin": s["margin"],
                                  "top2": [s["topk"][0], s["topk"][1]]})
        full_pos = sorted(set([0, n // 2, n - 1]))
        for pos in full_pos:
            row = scores[pos].astype("<f4")
            rowf.write(row.tobytes())
            rows_index.append({"prompt": pi, "pos": pos, "offset": offset})
            offset += row.nbytes

        # greedy continuation, driven by hand
        gen = []
        gsteps = []
        last = scores[n - 1]
        for step in range(N_GEN):
            s = summarize(last)
            tok = s["argmax"]
            s["step"] = step
            gsteps.append(s)
            gen.append(tok)
            if s["margin"] < NEAR_TIE:
                near_ties.append({"prompt": pi, "name": p["name"], "kind": "greedy",
                                  "step": step, "pos": n + step, "margin": s["margin"],
                                  "top2": [s["topk"][0], s["topk"][1]]})
            if step + 1 < N_GEN:
                llm.eval([tok])
                last = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)

        text = llm.detokenize(gen, special=True).decode("utf-8", errors="replace")
        prompts_out.append({
            "name": p["name"],
            "text": p["text"],
            "n_tokens": n,
            "tokens": [int(t) for t in toks],
            "teacher_forced": positions,
            "full_row_positions": full_pos,
            "greedy": {
                "n_new": N_GEN,
                "tokens": [int(t) for t in gen],
                "text": text,
                # greedy steps at or after this one may legitimately diverge in
                # another engine (top1-top2 margin < near_tie_threshold); null = none
                "first_near_tie_step": next((g["step"] for g in gsteps
                                             if g["margin"] < NEAR_TIE), None),
                # same, for looser thresholds: an exact-fp32/fp64 forward on the
                # dequantized weights disagrees with llama.cpp's argmax at
                # margins up to ~0.4 (llama.cpp quantizes activations to Q8)
                "first_step_margin_below": {
                    str(th): next((g["step"] for g in gsteps if g["margin"] < th), None)
                    for th in (0.05, 0.1, 0.25, 0.5, 1.0)},
                "steps": gsteps,
            },
        })
        print(f"[{pi}] {p['name']}: {n} tokens; greedy: {text[:60]!r}", file=sys.stderr)
    rowf.close()

    out = {
        "meta": meta,
        "rows_index": rows_index,
        "prompts": prompts_out,
        "near_ties": near_ties,
    }
    with open(args.out, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(json.dumps({"json_bytes": os.path.getsize(args.out),
                      "rows_bytes": os.path.getsize(args.rows),
                      "n_tokens": [p["n_tokens"] for p in prompts_out],
                      "near_ties": near_ties}, indent=1))


if __name__ == "__main__":
    main()
