#!/usr/bin/env python3
"""Tiny mixture-of-experts models as Hugging Face directories, and their float64 forward.

For each of four models it writes tests/reference/moe_tiny_<name>/ (config.json,
model.safetensors in F32, and spm_tiny's tokenizer.json: 703 tokens) and
tests/reference/moe_tiny_<name>_golden.json + moe_tiny_<name>_logits.bin: the logits of every
position of a 24-token prompt (teacher forced) from a float64 numpy forward written from the
Hugging Face modelling code, and the experts the router chose for every token in every expert
layer, in the order of their choice scores (on equal scores the lower expert index first: the
tie rule tessera states in kernels/backend.h):

  mixtral    block_sparse_moe.gate / experts.N.w1,w2,w3; softmax, top-2 of 8, renormalised
  qwen2_moe  mlp.gate / mlp.experts.N.*_proj, a shared expert with its sigmoid gate, QKV biases;
             softmax, top-2 of 8, not renormalised (norm_topk_prob false)
  qwen3_moe  per-head q/k RMSNorm before RoPE, head_dim 32 (not hidden / heads); softmax, top-2
             of 8, renormalised (norm_topk_prob true)
  deepseek   DeepSeek V3's routing on standard attention (q/k/v/o projections: tessera does not
             run MLA): sigmoid scores plus e_score_correction_bias for the choice, 4 groups of 2
             of which the best 2 (a group's score: the sum of its best two), top-2 renormalised
             then x routed_scaling_factor 2.5; first layer dense, a shared expert without gate

Every model has a constructed tie: in its first expert layer the router rows of experts 1 and 2
(DeepSeek: 2 and 3, one group) are equal (and so are their correction biases), so both score exactly alike for every token and
the tie rule decides whenever they meet at the top-k boundary. The golden stores how many tokens
that happened for, and the NMSE of the logits had ties gone to the higher index instead.

The Qwen2-MoE model is also written as tests/reference/moe_tiny_qwen2_moe.gguf (architecture
qwen2moe, llama.cpp's names: experts stacked in ffn_{gate,up,down}_exps, spm_tiny.gguf's
tokenizer), whose logits and routes are the same golden's.

    python3 tests/reference/make_moe_golden.py   # numpy, gguf
"""
import json
import os
import shutil
import struct

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DIM, NH, NKV, E, MOE_FFN, V, CTX = 64, 4, 2, 8, 32, 704, 256
HD = DIM // NH
EPS, THETA = 1e-5, 10000.0
PROMPT_LEN = 24

MODELS = {
    "mixtral": dict(layers=2, dense=0, k=2, softmax=True, norm=True, shared=0, shared_gate=False,
                    groups=0, topk_group=0, scale=1.0, bias=False,
                    config={"model_type": "mixtral", "architectures": ["MixtralForCausalLM"],
                            "intermediate_size": MOE_FFN, "num_local_experts": E,
                            "num_experts_per_tok": 2}),
    "qwen2_moe": dict(layers=2, dense=0, k=2, softmax=True, norm=False, shared=64,
                      shared_gate=True, groups=0, topk_group=0, scale=1.0, bias=False,
                      config={"model_type": "qwen2_moe", "architectures": ["Qwen2MoeForCausalLM"],
                              "intermediate_size": 128, "num_experts": E,
                              "num_experts_per_tok": 2, "moe_intermediate_size": MOE_FFN,
                              "shared_expert_intermediate_size": 64, "norm_topk_prob": False,
                              "decoder_sparse_step": 1, "mlp_only_layers": []}),
    "deepseek": dict(layers=3, dense=1, k=2, softmax=False, norm=True, shared=MOE_FFN, tie=(2, 3),
                     shared_gate=False, groups=4, topk_group=2, scale=2.5, bias=True,
                     config={"model_type": "deepseek_v3", "architectures": ["DeepseekV3ForCausalLM"],
                             "intermediate_size": 96, "n_routed_experts": E,
                             "num_experts_per_tok": 2, "moe_intermediate_size": MOE_FFN,
                             "n_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 4,
                             "topk_group": 2, "topk_method": "noaux_tc", "scoring_func": "sigmoid",
                             "norm_topk_prob": True, "routed_scaling_factor": 2.5,
                             "moe_layer_freq": 1, "attention_bias": False}),
    "qwen3_moe": dict(layers=2, dense=0, k=2, softmax=True, norm=True, shared=0,
                      shared_gate=False, groups=0, topk_group=0, scale=1.0, bias=False, hd=32,
                      config={"model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"],
                              "intermediate_size": 128, "num_experts": E, "head_dim": 32,
                              "num_experts_per_tok": 2, "moe_intermediate_size": MOE_FFN,
                              "norm_topk_prob": True, "decoder_sparse_step": 1,
                              "mlp_only_layers": []}),
}


def weights(name, spec, seed):
    g = np.random.default_rng(seed)

    def n(*shape, s=0.2):
        return (g.standard_normal(shape) * s).astype(np.float32)

    mix = name == "mixtral"
    w = {"model.embed_tokens.weight": n(V, DIM, s=0.5), "model.norm.weight": 1 + n(DIM, s=0.1)}
    for l in range(spec["layers"]):
        p = "model.layers.%d." % l
        w[p + "input_layernorm.weight"] = 1 + n(DIM, s=0.1)
        w[p + "post_attention_layernorm.weight"] = 1 + n(DIM, s=0.1)
        hd = spec.get("hd", HD)
        for proj, rows in (("q", NH * hd), ("k", NKV * hd), ("v", NKV * hd)):
            w[p + "self_attn.%s_proj.weight" % proj] = n(rows, DIM)
            if name == "qwen2_moe":
                w[p + "self_attn.%s_proj.bias" % proj] = n(rows, s=0.3)
        w[p + "self_attn.o_proj.weight"] = n(DIM, NH * hd)
        if name == "qwen3_moe":
            w[p + "self_attn.q_norm.weight"] = 1 + n(hd, s=0.1)
            w[p + "self_attn.k_norm.weight"] = 1 + n(hd, s=0.1)
        if l < spec["dense"]:
            f = spec["config"]["intermediate_size"]
            w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"] = n(f, DIM), n(f, DIM)
            w[p + "mlp.down_proj.weight"] = n(DIM, f)
            continue
        router = n(E, DIM, s=0.3)
        a, b = spec.get("tie", (1, 2))
        if l == spec["dense"]:
            router[b] = router[a]  # the constructed tie
        q = p + ("block_sparse_moe." if mix else "mlp.")
        w[q + "gate.weight"] = router
        if spec["bias"]:
            cb = n(E, s=0.05)
            if l == spec["dense"]:
                cb[b] = cb[a]
            w[q + "gate.e_score_correction_bias"] = cb
        for e in range(E):
            gt, up, dn = n(MOE_FFN, DIM), n(MOE_FFN, DIM), n(DIM, MOE_FFN)
            if mix:
                w[q + "experts.%d.w1.weight" % e], w[q + "experts.%d.w3.weight" % e] = gt, up
                w[q + "experts.%d.w2.weight" % e] = dn
            else:
                w[q + "experts.%d.gate_proj.weight" % e] = gt
                w[q + "experts.%d.up_proj.weight" % e] = up
                w[q + "experts.%d.down_proj.weight" % e] = dn
        if spec["shared"]:
            s = q + ("shared_expert." if name == "qwen2_moe" else "shared_experts.")
            f = spec["shared"]
            w[s + "gate_proj.weight"], w[s + "up_proj.weight"] = n(f, DIM), n(f, DIM)
            w[s + "down_proj.weight"] = n(DIM, f)
        if spec["shared_gate"]:
            w[q + "shared_expert_gate.weight"] = n(1, DIM)
    return w


def write_safetensors(path, w):
    header, off, blobs = {}, 0, []
    for k in sorted(w):
        b = np.ascontiguousarray(w[k], dtype="<f4").tobytes()
        header[k] = {"dtype": "F32", "shape": list(w[k].shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def gguf_weights(w, spec):
    """The qwen2_moe weights by llama.cpp's names: experts stacked (n_expert, rows, cols)."""
    g = {"token_embd.weight": w["model.embed_tokens.weight"],
         "output_norm.weight": w["model.norm.weight"]}
    names = {"input_layernorm.weight": "attn_norm.weight",
             "post_attention_layernorm.weight": "ffn_norm.weight",
             "self_attn.o_proj.weight": "attn_output.weight",
             "mlp.gate.weight": "ffn_gate_inp.weight",
             "mlp.shared_expert_gate.weight": "ffn_gate_inp_shexp.weight"}
    for proj in "qkv":
        for kind in ("weight", "bias"):
            names["self_attn.%s_proj.%s" % (proj, kind)] = "attn_%s.%s" % (proj, kind)
    for proj in ("gate", "up", "down"):
        names["mlp.shared_expert.%s_proj.weight" % proj] = "ffn_%s_shexp.weight" % proj
    for l in range(spec["layers"]):
        p = "model.layers.%d." % l
        for hf, gg in names.items():
            g["blk.%d.%s" % (l, gg)] = w[p + hf]
        g["blk.%d.ffn_gate_inp_shexp.weight" % l] = w[p + "mlp.shared_expert_gate.weight"][0]
        for proj in ("gate", "up", "down"):
            g["blk.%d.ffn_%s_exps.weight" % (l, proj)] = np.stack(
                [w[p + "mlp.experts.%d.%s_proj.weight" % (e, proj)] for e in range(E)])
    return g


def write_gguf(path, w, spec):
    from gguf import GGUFReader, GGUFWriter  # only for this file

    tok = {k: v.contents() for k, v in
           GGUFReader(os.path.join(HERE, "spm_tiny.gguf")).fields.items()}
    out = GGUFWriter(path, "qwen2moe")
    out.add_name("qwen2moe-tiny")
    out.add_block_count(spec["layers"])
    out.add_context_length(CTX)
    out.add_embedding_length(DIM)
    out.add_feed_forward_length(spec["config"]["intermediate_size"])
    out.add_head_count(NH)
    out.add_head_count_kv(NKV)
    out.add_rope_freq_base(THETA)
    out.add_layer_norm_rms_eps(EPS)
    out.add_vocab_size(V)
    out.add_expert_count(E)
    out.add_expert_used_count(spec["k"])
    out.add_expert_feed_forward_length(MOE_FFN)
    out.add_expert_shared_feed_forward_length(spec["shared"])
    out.add_tokenizer_model(tok["tokenizer.ggml.model"])
    out.add_tokenizer_pre(tok["tokenizer.ggml.pre"])
    out.add_token_list(tok["tokenizer.ggml.tokens"])
    out.add_token_scores(tok["tokenizer.ggml.scores"])
    out.add_token_types(tok["tokenizer.ggml.token_type"])
    out.add_bos_token_id(tok["tokenizer.ggml.bos_token_id"])
    out.add_eos_token_id(tok["tokenizer.ggml.eos_token_id"])
    out.add_unk_token_id(tok["tokenizer.ggml.unknown_token_id"])
    for name, a in gguf_weights(w, spec).items():
        out.add_tensor(name, np.ascontiguousarray(a, dtype=np.float32))
    out.write_header_to_file()
    out.write_kv_data_to_file()
    out.write_tensors_to_file()
    out.close()


def rmsnorm(x, wt, eps=EPS):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * wt


def rope(x, pos):  # rotate-half (Hugging Face layout): pairs (i, i + head_dim/2)
    hd = x.shape[-1]
    half = hd // 2
    inv = THETA ** (-np.arange(half, dtype=np.float64) * 2 / hd)
    ang = pos[:, None] * inv[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * c - b * s, a * s + b * c], -1)


def silu(x):
    return x / (1 + np.exp(-x))


def mlp(x, g, u, d):
    return (silu(x @ g.T) * (x @ u.T)) @ d.T


def rank(v, ok, tie_high):
    """Indices of ok entries by v descending; ties to the lower index (or the higher)."""
    idx = [i for i in range(len(v)) if ok[i]]
    return sorted(idx, key=lambda i: (-v[i], -i if tie_high else i))


def route(spec, logits, bias, tie_high):
    k = spec["k"]
    if spec["softmax"]:
        z = np.exp(logits - logits.max())
        s = z / z.sum()
    else:
        s = 1 / (1 + np.exp(-logits))
    c = s + (bias if bias is not None else 0)
    ok, gap = [True] * E, np.inf
    if spec["groups"]:
        gsz = E // spec["groups"]
        gs = []
        for gi in range(spec["groups"]):
            cg = sorted(c[gi * gsz:(gi + 1) * gsz], reverse=True)
            gs.append(cg[0] if spec["softmax"] else cg[0] + cg[1])
        order = rank(gs, [True] * len(gs), tie_high)
        keep = set(order[:spec["topk_group"]])
        gap = gs[order[spec["topk_group"] - 1]] - gs[order[spec["topk_group"]]]
        ok = [e // gsz in keep for e in range(E)]
    order = rank(c, ok, tie_high)
    ids = order[:k]
    top = [c[i] for i in order[:k + 1]]
    gaps = [top[i] - top[i + 1] for i in range(len(top) - 1)]
    tie = len(top) > k and top[k - 1] == top[k]  # the k-th and the next score alike
    nonzero = [g for g in gaps if g > 0]
    gap = min([gap] + nonzero)
    wt = s[ids]
    if spec["norm"]:
        wt = wt / wt.sum()
    return ids, wt * spec["scale"], float(gap), bool(tie)


def forward(name, spec, w, toks, tie_high=False, qk_norm=True):
    T = len(toks)
    pos = np.arange(T, dtype=np.float64)
    W = {k: v.astype(np.float64) for k, v in w.items()}
    x = W["model.embed_tokens.weight"][toks]
    routes = []
    mix = name == "mixtral"
    for l in range(spec["layers"]):
        p = "model.layers.%d." % l
        h = rmsnorm(x, W[p + "input_layernorm.weight"])
        qkv = []
        hd = spec.get("hd", HD)
        for proj, nh in (("q", NH), ("k", NKV), ("v", NKV)):
            y = h @ W[p + "self_attn.%s_proj.weight" % proj].T
            if p + "self_attn.%s_proj.bias" % proj in W:
                y = y + W[p + "self_attn.%s_proj.bias" % proj]
            y = y.reshape(T, nh, hd)
            if qk_norm and p + "self_attn.%s_norm.weight" % proj in W:  # Qwen3: per head, pre-RoPE
                y = rmsnorm(y, W[p + "self_attn.%s_norm.weight" % proj])
            qkv.append(y)
        q, k, v = rope(qkv[0], pos), rope(qkv[1], pos), qkv[2]
        att = np.zeros((T, NH, hd))
        for hh in range(NH):
            kv = hh // (NH // NKV)
            sc = q[:, hh] @ k[:, kv].T / np.sqrt(hd)
            sc = sc + np.triu(np.full((T, T), -np.inf), 1)
            pr = np.exp(sc - sc.max(-1, keepdims=True))
            pr /= pr.sum(-1, keepdims=True)
            att[:, hh] = pr @ v[:, kv]
        x = x + att.reshape(T, -1) @ W[p + "self_attn.o_proj.weight"].T
        h = rmsnorm(x, W[p + "post_attention_layernorm.weight"])
        if l < spec["dense"]:
            x = x + mlp(h, W[p + "mlp.gate_proj.weight"], W[p + "mlp.up_proj.weight"],
                        W[p + "mlp.down_proj.weight"])
            continue
        q = p + ("block_sparse_moe." if mix else "mlp.")
        logits = h @ W[q + "gate.weight"].T
        bias = W.get(q + "gate.e_score_correction_bias")
        out = np.zeros_like(h)
        layer = []
        for t in range(T):
            ids, wt, gap, tie = route(spec, logits[t], bias, tie_high)
            layer.append({"ids": [int(i) for i in ids], "gap": gap, "tie": tie})
            for i, e in zip(ids, wt):
                names = (("w1", "w3", "w2") if mix else ("gate_proj", "up_proj", "down_proj"))
                g, u, d = (W[q + "experts.%d.%s.weight" % (i, nm)] for nm in names)
                out[t] += e * mlp(h[t:t + 1], g, u, d)[0]
        if spec["shared"]:
            s = q + ("shared_expert." if name == "qwen2_moe" else "shared_experts.")
            sh = mlp(h, W[s + "gate_proj.weight"], W[s + "up_proj.weight"], W[s + "down_proj.weight"])
            if spec["shared_gate"]:
                sh = sh / (1 + np.exp(-(h @ W[q + "shared_expert_gate.weight"].T)))
            out = out + sh
        routes.append(layer)
        x = x + out
    h = rmsnorm(x, W["model.norm.weight"])
    return h @ W["model.embed_tokens.weight"].T, routes


def positions(logits):
    """Each position's argmax and margin (its top two logits' difference), as goldens store them."""
    out = []
    for row in logits:
        srt = np.sort(row)[::-1]
        out.append({"argmax": int(np.argmax(row)), "margin": float(srt[0] - srt[1])})
    return out


def main():
    tok = os.path.join(HERE, "spm_tiny_tokenizer.json")
    for seed, (name, spec) in enumerate(MODELS.items()):
        d = os.path.join(HERE, "moe_tiny_" + name)
        os.makedirs(d, exist_ok=True)
        cfg = {"num_hidden_layers": spec["layers"], "hidden_size": DIM, "num_attention_heads": NH,
               "num_key_value_heads": NKV, "vocab_size": V, "max_position_embeddings": CTX,
               "rms_norm_eps": EPS, "rope_theta": THETA, "tie_word_embeddings": True,
               "torch_dtype": "float32"}
        cfg.update(spec["config"])
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=1)
        shutil.copyfile(tok, os.path.join(d, "tokenizer.json"))
        w = weights(name, spec, 20261207 + seed)
        write_safetensors(os.path.join(d, "model.safetensors"), w)
        if name == "qwen2_moe":  # the same model as llama.cpp's GGUF: the same golden
            write_gguf(os.path.join(HERE, "moe_tiny_qwen2_moe.gguf"), w, spec)
        toks = np.random.default_rng(7 + seed).integers(3, V - 1, PROMPT_LEN)
        logits, routes = forward(name, spec, w, toks)
        other, _ = forward(name, spec, w, toks, tie_high=True)
        nmse_other = float(((other - logits) ** 2).sum() / (logits ** 2).sum())
        plain, _ = forward(name, spec, w, toks, qk_norm=False)
        nmse_plain = float(((plain - logits) ** 2).sum() / (logits ** 2).sum())
        n_ties = sum(r["tie"] for layer in routes for r in layer)
        pos = positions(logits)
        golden = {"model": "moe_tiny_" + name, "tokens": [int(t) for t in toks], "n_vocab": V,
                  "n_expert_used": spec["k"], "positions": pos, "routes": routes,
                  "meta": {"constructed_ties": n_ties, "nmse_ties_to_higher_index": nmse_other,
                           "nmse_without_qk_norm": nmse_plain,
                           "writer": "tests/reference/make_moe_golden.py"}}
        with open(os.path.join(HERE, "moe_tiny_%s_golden.json" % name), "w") as f:
            json.dump(golden, f, indent=None)
        logits.astype("<f4").tofile(os.path.join(HERE, "moe_tiny_%s_logits.bin" % name))
        print("%s: %d expert layers, %d boundary ties, NMSE had ties gone high: %.3g" %
              (name, len(routes), n_ties, nmse_other))


if __name__ == "__main__":
    main()
