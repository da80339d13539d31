#!/usr/bin/env python3
"""A tiny Qwen2-shaped model with QKV biases, and its float64 logits.

Writes tests/reference/qwen2_tiny.gguf (architecture qwen2: 2 layers, dim 48, 12 heads of 4,
6 KV heads, FFN 96, tied embeddings, attn_q/k/v biases, F32, seeded random weights; the
tokenizer of bpe_tiny.gguf, 1,203 tokens) with gguf-py's writer, and qwen2_tiny_golden.json +
qwen2_tiny_logits.bin: the logits of every position of a 20-token prompt from a float64 numpy
forward pass written from the architecture's definition (RMSNorm, Q/K/V with bias, NEOX
rotate-half RoPE as llama.cpp applies to qwen2, grouped-query attention, SwiGLU, tied head).
12 heads and 6 KV heads split at tp = 2 and 3. The biases are large enough that dropping them
moves the logits far (the NMSE between with and without is printed and stored).

    /opt/oracle/bin/python tests/reference/make_qwen2_golden.py   # numpy, gguf
"""
import json
import os

import numpy as np
from gguf import GGUFReader, GGUFWriter

HERE = os.path.dirname(os.path.abspath(__file__))
L, DIM, NH, NKV, FFN, CTX = 2, 48, 12, 6, 96, 256
HD = DIM // NH
EPS, THETA = 1e-6, 10000.0
PROMPT_LEN = 20


def tokenizer_fields():
    r = GGUFReader(os.path.join(HERE, "bpe_tiny.gguf"))
    f = {k: v.contents() for k, v in r.fields.items()}
    return f


def weights(vocab):
    g = np.random.default_rng(20261206)

    def n(*shape, s=0.2):
        return (g.standard_normal(shape) * s).astype(np.float32)

    w = {"token_embd.weight": n(vocab, DIM, s=0.5), "output_norm.weight": (1 + n(DIM, s=0.1))}
    for l in range(L):
        p = "blk.%d." % l
        w[p + "attn_norm.weight"] = 1 + n(DIM, s=0.1)
        w[p + "attn_q.weight"], w[p + "attn_q.bias"] = n(NH * HD, DIM), n(NH * HD, s=0.5)
        w[p + "attn_k.weight"], w[p + "attn_k.bias"] = n(NKV * HD, DIM), n(NKV * HD, s=0.5)
        w[p + "attn_v.weight"], w[p + "attn_v.bias"] = n(NKV * HD, DIM), n(NKV * HD, s=0.5)
        w[p + "attn_output.weight"] = n(DIM, NH * HD)
        w[p + "ffn_norm.weight"] = 1 + n(DIM, s=0.1)
        w[p + "ffn_gate.weight"], w[p + "ffn_up.weight"] = n(FFN, DIM), n(FFN, DIM)
        w[p + "ffn_down.weight"] = n(DIM, FFN)
    return w


def write_gguf(path, w, tok):
    out = GGUFWriter(path, "qwen2")
    out.add_name("qwen2-tiny-bias")
    out.add_block_count(L)
    out.add_context_length(CTX)
    out.add_embedding_length(DIM)
    out.add_feed_forward_length(FFN)
    out.add_head_count(NH)
    out.add_head_count_kv(NKV)
    out.add_rope_freq_base(THETA)
    out.add_layer_norm_rms_eps(EPS)
    out.add_tokenizer_model(tok["tokenizer.ggml.model"])
    out.add_tokenizer_pre(tok["tokenizer.ggml.pre"])
    out.add_token_list(tok["tokenizer.ggml.tokens"])
    out.add_token_types(tok["tokenizer.ggml.token_type"])
    out.add_token_merges(tok["tokenizer.ggml.merges"])
    out.add_bos_token_id(tok["tokenizer.ggml.bos_token_id"])
    out.add_eos_token_id(tok["tokenizer.ggml.eos_token_id"])
    out.add_add_bos_token(False)
    for name, a in w.items():
        out.add_tensor(name, a)
    out.write_header_to_file()
    out.write_kv_data_to_file()
    out.write_tensors_to_file()
    out.close()


def forward(w, ids, bias=True):
    f = {k: v.astype(np.float64) for k, v in w.items()}
    T = len(ids)
    pos = np.arange(T, dtype=np.float64)
    inv = THETA ** (-np.arange(0, HD, 2) / HD)
    ang = pos[:, None] * inv[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def rms(x, g):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS) * g

    def rope(x):  # NEOX: the first and second halves of each head are the pairs
        h = HD // 2
        x0, x1 = x[..., :h], x[..., h:]
        return np.concatenate([x0 * c - x1 * s, x1 * c + x0 * s], axis=-1)

    x = f["token_embd.weight"][ids]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(L):
        p = "blk.%d." % l
        xn = rms(x, f[p + "attn_norm.weight"])
        q = xn @ f[p + "attn_q.weight"].T + (f[p + "attn_q.bias"] if bias else 0)
        k = xn @ f[p + "attn_k.weight"].T + (f[p + "attn_k.bias"] if bias else 0)
        v = xn @ f[p + "attn_v.weight"].T + (f[p + "attn_v.bias"] if bias else 0)
        q, k, v = rope(q.reshape(T, NH, HD)), rope(k.reshape(T, NKV, HD)), v.reshape(T, NKV, HD)
        att = np.empty((T, NH, HD))
        for h in range(NH):
            kh = h // (NH // NKV)
            sc = q[:, h] @ k[:, kh].T / np.sqrt(HD) + mask
            sc = np.exp(sc - sc.max(axis=1, keepdims=True))
            att[:, h] = (sc / sc.sum(axis=1, keepdims=True)) @ v[:, kh]
        x = x + att.reshape(T, DIM) @ f[p + "attn_output.weight"].T
        xn = rms(x, f[p + "ffn_norm.weight"])
        gt, up = xn @ f[p + "ffn_gate.weight"].T, xn @ f[p + "ffn_up.weight"].T
        x = x + (gt / (1 + np.exp(-gt)) * up) @ f[p + "ffn_down.weight"].T
    return rms(x, f["output_norm.weight"]) @ f["token_embd.weight"].T


def main():
    tok = tokenizer_fields()
    vocab = len(tok["tokenizer.ggml.tokens"])
    w = weights(vocab)
    write_gguf(os.path.join(HERE, "qwen2_tiny.gguf"), w, tok)
    ids = [int(i) for i in np.random.default_rng(7).integers(3, vocab, PROMPT_LEN)]
    logits = forward(w, ids)
    nobias = forward(w, ids, bias=False)
    nmse = float(np.sum((logits - nobias) ** 2) / np.sum(logits ** 2))
    logits.astype("<f4").tofile(os.path.join(HERE, "qwen2_tiny_logits.bin"))
    json.dump({"meta": {"oracle": "numpy float64 forward of the qwen2 architecture",
                        "script": "tests/reference/make_qwen2_golden.py", "numpy": np.__version__,
                        "nmse_without_bias": nmse},
               "n_vocab": vocab, "tokens": ids, "argmax": [int(a) for a in logits.argmax(axis=1)]},
              open(os.path.join(HERE, "qwen2_tiny_golden.json"), "w"), indent=1)
    print("vocab %d, %d positions; NMSE of the logits without the biases: %.3g" % (vocab, len(ids), nmse))


if __name__ == "__main__":
    main()
