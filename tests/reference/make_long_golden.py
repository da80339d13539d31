#!/usr/bin/env python3
"""Exact reference for a long context: 4,096 positions of the default model, teacher-forced,
from the float64 forward pass of make_exact_golden.py (gguf-py's dequantized weights, numpy
float64 throughout). The text is this repository's own prose (README and docs/), tokenized with
Hugging Face `tokenizers` from tests/reference/smollm2_tokenizer.json; the ids are stored, so the
golden does not move when the docs do.

Writes forward_long_smollm2.json (per position: argmax, top1-top2 margin, top-4) and
forward_long_smollm2_rows.bin (full f32 logit rows at the positions in rows_at).

    /opt/oracle/bin/python tests/reference/make_long_golden.py   # numpy, gguf, tokenizers
"""
import json
import os
import sys

import numpy as np

from make_exact_golden import HERE, ROOT, load_model

N = 4096
CHUNK = 512
TOPK = 4
ROWS_AT = [0, 511, 512, 1500, 2047, 2048, 3000, 4095]


def tokens():
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(HERE, "smollm2_tokenizer.json"))
    text = "".join(open(os.path.join(ROOT, p), encoding="utf-8").read()
                   for p in ("README.md", "docs/correctness.md", "docs/api.md", "docs/benchmarks.md"))
    ids = tok.encode(text, add_special_tokens=False).ids
    if len(ids) < N:
        sys.exit("only %d tokens of text; need %d" % (len(ids), N))
    return ids[:N]


def main():
    ids = tokens()
    forward, new_cache = load_model()
    cache, rows, per_pos = new_cache(), [], []
    for at in range(0, N, CHUNK):
        logits = forward(np.array(ids[at:at + CHUNK]), cache)
        for i, row in enumerate(logits):
            top = np.argsort(-row, kind="stable")[:TOPK]
            per_pos.append({"argmax": int(top[0]), "margin": round(float(row[top[0]] - row[top[1]]), 6),
                            "topk": [[int(t), round(float(row[t]), 5)] for t in top]})
            if at + i in ROWS_AT:
                rows.append(row.astype("<f4"))
        print("positions %d..%d done" % (at, at + len(logits) - 1), flush=True)
    out = {"meta": {"oracle": "numpy float64 forward over gguf-py dequantized weights",
                    "script": "tests/reference/make_long_golden.py", "numpy": np.__version__},
           "tokens": ids, "rows_at": ROWS_AT, "teacher_forced": per_pos}
    json.dump(out, open(os.path.join(HERE, "forward_long_smollm2.json"), "w"))
    np.concatenate(rows).tofile(os.path.join(HERE, "forward_long_smollm2_rows.bin"))
    print("min margin %.5f" % min(p["margin"] for p in per_pos))


if __name__ == "__main__":
    main()
