#!/usr/bin/env python3
"""Exact reference for the forward pass: the default model's GGUF weights dequantized to float64
(gguf-py's dequantize) and the Llama forward pass written out in numpy, float64 throughout, with
no activation quantization. It answers "what does this model compute", where llama.cpp's goldens
(make_forward_golden.py) answer "what does llama.cpp compute" — llama.cpp rounds activations to
8 bits inside its quantized matmuls, which moves its logits measurably (see docs/correctness.md).

Uses the prompts (token ids) of forward_golden_smollm2.json, so both goldens cover the same
positions. Writes forward_exact_smollm2.json (per position: argmax, top1-top2 margin, top-16; and a 64-token greedy
continuation with the same per step) and
forward_exact_smollm2_rows.bin (full f32 rows at the positions rows_index lists, same order).

    /opt/oracle/bin/python tests/reference/make_exact_golden.py   # needs numpy and gguf
"""
import json
import os

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
TOPK = 16
N_GEN = 64


def load_model(path=MODEL, transform=None):
    """The model in float64: returns forward(ids, cache) -> logits of ids, and new_cache().
    transform, if given, maps each dequantized float32 tensor first (make_hf_bf16_golden.py
    rounds them to bf16)."""
    r = GGUFReader(path)
    f = {k: v.contents() for k, v in r.fields.items()
         if k.startswith("llama.") and not isinstance(v.contents(), list)}
    n_layer, n_head = f["llama.block_count"], f["llama.attention.head_count"]
    n_kv, dim = f["llama.attention.head_count_kv"], f["llama.embedding_length"]
    eps, theta = f["llama.attention.layer_norm_rms_epsilon"], f["llama.rope.freq_base"]
    hd = dim // n_head
    tensors = {t.name: t for t in r.tensors}

    def W(name):
        t = tensors[name]
        a = dequantize(t.data, t.tensor_type).astype(np.float32)
        a = (transform(a) if transform else a).astype(np.float64)
        return a.reshape([int(x) for x in reversed(t.shape)]) if len(t.shape) > 1 else a.ravel()

    emb = W("token_embd.weight")
    layers = [{k: W(f"blk.{l}.{k}.weight") for k in
               ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm",
                "ffn_gate", "ffn_up", "ffn_down")} for l in range(n_layer)]
    out_norm = W("output_norm.weight")
    inv = theta ** (-np.arange(0, hd, 2) / hd)  # (hd/2,)

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w

    def rope(x, pos):  # x (T, heads, hd); GGUF llama: pairs (2i, 2i+1)
        ang = pos[:, None] * inv[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * c - x1 * s
        out[..., 1::2] = x0 * s + x1 * c
        return out

    def forward(ids, cache):
        """Logits of the new tokens ids; cache holds each layer's past K and V (grown here)."""
        T, P = len(ids), cache[0][0].shape[0]
        pos = np.arange(P, P + T, dtype=np.float64)
        x = emb[ids]
        mask = np.triu(np.full((T, P + T), -np.inf), P + 1)
        for L, c in zip(layers, cache):
            xn = rms(x, L["attn_norm"])
            q = rope((xn @ L["attn_q"].T).reshape(T, n_head, hd), pos)
            k = rope((xn @ L["attn_k"].T).reshape(T, n_kv, hd), pos)
            v = (xn @ L["attn_v"].T).reshape(T, n_kv, hd)
            c[0], c[1] = np.concatenate([c[0], k]), np.concatenate([c[1], v])
            att = np.empty((T, n_head, hd))
            for h in range(n_head):
                kh = h // (n_head // n_kv)
                sc = q[:, h, :] @ c[0][:, kh, :].T / np.sqrt(hd) + mask
                sc = np.exp(sc - sc.max(axis=1, keepdims=True))
                att[:, h, :] = (sc / sc.sum(axis=1, keepdims=True)) @ c[1][:, kh, :]
            x = x + att.reshape(T, dim) @ L["attn_output"].T
            xn = rms(x, L["ffn_norm"])
            g, u = xn @ L["ffn_gate"].T, xn @ L["ffn_up"].T
            x = x + (g / (1 + np.exp(-g)) * u) @ L["ffn_down"].T
        return rms(x, out_norm) @ emb.T

    def new_cache():
        return [[np.zeros((0, n_kv, hd)), np.zeros((0, n_kv, hd))] for _ in layers]

    return forward, new_cache


def main():
    forward, new_cache = load_model()

    def summary(row):
        top = np.argsort(-row, kind="stable")[:TOPK]
        return {"argmax": int(top[0]), "margin": round(float(row[top[0]] - row[top[1]]), 6),
                "topk": [[int(i), round(float(row[i]), 5)] for i in top]}

    gold = json.load(open(os.path.join(HERE, "forward_golden_smollm2.json")))
    out = {"meta": {"oracle": "numpy float64 forward over gguf-py dequantized weights",
                    "script": "tests/reference/make_exact_golden.py",
                    "numpy": np.__version__},
           "rows_index": gold["rows_index"], "prompts": []}
    rows = []
    for pi, p in enumerate(gold["prompts"]):
        cache = new_cache()
        logits = forward(np.array(p["tokens"]), cache)
        tf = [summary(row) for row in logits]
        # greedy: argmax (ties to the lowest id), EOS does not stop, N_GEN tokens
        steps, row = [], logits[-1]
        for _ in range(N_GEN):
            steps.append(summary(row))
            row = forward(np.array([steps[-1]["argmax"]]), cache)[0]
        out["prompts"].append({"name": p["name"], "tokens": p["tokens"], "teacher_forced": tf,
                               "greedy": {"tokens": [s["argmax"] for s in steps],
                                          "steps": steps}})
        for ri in gold["rows_index"]:
            if ri["prompt"] == pi:
                rows.append(logits[ri["pos"]].astype("<f4"))
        print(f"{p['name']}: {len(p['tokens'])} positions, min greedy margin "
              f"{min(s['margin'] for s in steps):.4f}")
    json.dump(out, open(os.path.join(HERE, "forward_exact_smollm2.json"), "w"))
    np.concatenate(rows).tofile(os.path.join(HERE, "forward_exact_smollm2_rows.bin"))


if __name__ == "__main__":
    main()
