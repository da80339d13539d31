#!/usr/bin/env python3
"""Exact reference for the default model converted to a Hugging Face bf16 directory
(convert_to_hf_bf16.py): make_exact_golden.py's float64 forward pass over the GGUF weights
dequantized and rounded to bf16, each tensor as the converter rounds it. The forward runs on the
GGUF layout (interleaved rotary pairs, GGUF names): the converter's renaming, row permutation,
sharding and file format are what tests/unit/test_forward_hf_bf16 checks against this, not
something this golden shares.

Three of forward_golden_smollm2.json's prompts (a story, a ChatML chat, C code: 213 positions).
Writes forward_hf_bf16_smollm2.json (per position: argmax, top1-top2 margin, top-16, in
forward_exact_smollm2.json's format; the prompts' text, for the directory's tokenizer) and
forward_hf_bf16_smollm2_rows.bin (full f32 rows at the positions rows_index lists). meta records
how far the bf16 rounding moves these logits from the unrounded weights' (forward_exact_*).

    /opt/oracle/bin/python tests/reference/make_hf_bf16_golden.py   # numpy, gguf
"""
import json
import os

import numpy as np

from convert_to_hf_bf16 import bf16_round
from make_exact_golden import HERE, TOPK, load_model

PROMPTS = ["short_story", "chat_chatml", "code_c"]
ROWS = [("chat_chatml", 46), ("code_c", 144)]


def main():
    forward, new_cache = load_model(transform=bf16_round)
    gold = json.load(open(os.path.join(HERE, "forward_golden_smollm2.json")))
    exact = json.load(open(os.path.join(HERE, "forward_exact_smollm2.json")))
    exact_rows = np.fromfile(os.path.join(HERE, "forward_exact_smollm2_rows.bin"), "<f4")
    V = exact_rows.size // len(exact["rows_index"])
    out = {"meta": {"oracle": "numpy float64 forward over gguf-py dequantized weights rounded "
                              "to bf16 (round to nearest even)",
                    "script": "tests/reference/make_hf_bf16_golden.py",
                    "converter": "tests/reference/convert_to_hf_bf16.py",
                    "numpy": np.__version__},
           "rows_index": [], "prompts": []}
    rows, moved, moved_nmse = [], 0.0, 0.0
    for name in PROMPTS:
        pi = next(i for i, p in enumerate(gold["prompts"]) if p["name"] == name)
        p = gold["prompts"][pi]
        logits = forward(np.array(p["tokens"]), new_cache())
        tf = []
        for i, row in enumerate(logits):
            top = np.argsort(-row, kind="stable")[:TOPK]
            tf.append({"argmax": int(top[0]), "margin": round(float(row[top[0]] - row[top[1]]), 6),
                       "topk": [[int(t), round(float(row[t]), 5)] for t in top]})
            for t, v in exact["prompts"][pi]["teacher_forced"][i]["topk"]:
                moved = max(moved, abs(float(row[t]) - v))
        for k, ri in enumerate(exact["rows_index"]):
            if ri["prompt"] == pi:
                ref = exact_rows[k * V:(k + 1) * V].astype(np.float64)
                row = logits[ri["pos"]]
                moved_nmse = max(moved_nmse, float(np.sum((row - ref) ** 2) / np.sum(ref ** 2)))
        out["prompts"].append({"name": name, "text": p["text"], "tokens": p["tokens"],
                               "teacher_forced": tf})
        for rname, pos in ROWS:
            if rname == name:
                out["rows_index"].append({"prompt": len(out["prompts"]) - 1, "pos": pos})
                rows.append(logits[pos].astype("<f4"))
        print("%s: %d positions, min margin %.4f" % (name, len(p["tokens"]),
                                                     min(e["margin"] for e in tf)))
    out["meta"]["bf16_vs_unrounded"] = {"top16_max_abs": round(moved, 4),
                                        "row_nmse_max": float("%.3g" % moved_nmse)}
    print("bf16 rounding moves the top-16 logits by up to %.4f, full rows by NMSE up to %.3g"
          % (moved, moved_nmse))
    json.dump(out, open(os.path.join(HERE, "forward_hf_bf16_smollm2.json"), "w"))
    np.concatenate(rows).tofile(os.path.join(HERE, "forward_hf_bf16_smollm2_rows.bin"))


if __name__ == "__main__":
    main()
