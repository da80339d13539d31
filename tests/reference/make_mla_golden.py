#!/usr/bin/env python3
"""Tiny multi-head latent attention (MLA) models as Hugging Face directories, and their float64
forward, written from Hugging Face's DeepSeek-V3 modelling code (modeling_deepseek.py,
DeepseekV3Attention.forward and apply_rotary_pos_emb):

  q        = q_b_proj(q_a_layernorm(q_a_proj(h)))      (q_proj(h) when q_lora_rank is null;
             q_a_layernorm and kv_a_layernorm are built without rms_norm_eps: eps 1e-6)
             viewed (T, heads, qk_nope + qk_rope), split into q_nope, q_pe
  c, k_pe  = kv_a_proj_with_mqa(h) split into kv_lora_rank and qk_rope (k_pe: one head, shared)
  k_nope,v = kv_b_proj(kv_a_layernorm(c)) viewed (T, heads, qk_nope + v_head_dim), split
  q_pe,k_pe: RoPE over qk_rope_head_dim, with the interleave HF applies first: x viewed
             (d/2, 2), transposed, reshaped (pairs (2i, 2i+1) become (i, i + d/2)), then
             x * cos + rotate_half(x) * sin with cos/sin of cat(freqs, freqs)
  scores   = cat(q_nope, q_pe) . cat(k_nope, k_pe) * (qk_nope + qk_rope)^-0.5, causal softmax
  out      = o_proj(softmax . v)
  YaRN     = DeepseekV3YarnRotaryEmbedding: inverse frequencies ramped between base^(-2i/d) /
             factor and base^(-2i/d) over yarn_find_correction_range(beta_fast, beta_slow),
             cos and sin times mscale / mscale_all_dim's, and the softmax scale times
             yarn_get_mscale(factor, mscale_all_dim)^2

The expanded form above is the reference; tessera computes the absorbed one (kernels/backend.h
tsr_op_mla_attention), so the golden checks that the two agree too.

For each model it writes tests/reference/mla_tiny_<name>/ (config.json, model.safetensors in F32,
spm_tiny's tokenizer.json: 703 tokens) and mla_tiny_<name>_golden.json +
mla_tiny_<name>_logits.bin: the logits of every position of a 24-token prompt, teacher forced.

  deepseek_v3  q_lora_rank 32, kv_lora_rank 32, qk_nope 16, qk_rope 8, v_head_dim 24; first layer
               dense, two MoE layers with DeepSeek V3's routing (sigmoid, correction bias, 4
               groups of 2, best 2 groups, top-2 renormalised, x 2.5) and a shared expert; YaRN
               as V3's (factor 4, original context 64 so that the ramp falls inside the 4
               frequencies, beta 32/1, mscale = mscale_all_dim = 1)
  deepseek_v2  no q_lora_rank (q_proj), kv_lora_rank 32, qk_nope 8, qk_rope 16, v_head_dim 16;
               first layer dense, one MoE layer with V2's routing (softmax, top-2, not
               renormalised)

    python3 tests/reference/make_mla_golden.py   # numpy
"""
import json
import math
import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_moe_golden import E, EPS, MOE_FFN, PROMPT_LEN, THETA, V, mlp, positions, rmsnorm, \
    route, write_safetensors  # noqa: E402

DIM, NH, CTX = 64, 4, 256
LATENT_EPS = 1e-6  # q_a_layernorm, kv_a_layernorm: DeepseekV3RMSNorm(rank), its default eps

MODELS = {
    "deepseek_v3": dict(layers=3, dense=1, q_lora=32, kv_lora=32, nope=16, rope=8, v=24,
                        k=2, softmax=False, norm=True, groups=4, topk_group=2, scale=2.5,
                        bias=True, shared=MOE_FFN,
                        config={"model_type": "deepseek_v3",
                                "architectures": ["DeepseekV3ForCausalLM"],
                                "n_group": 4, "topk_group": 2, "topk_method": "noaux_tc",
                                "scoring_func": "sigmoid", "norm_topk_prob": True,
                                "routed_scaling_factor": 2.5,
                                "rope_scaling": {"type": "yarn", "factor": 4.0,
                                                 "original_max_position_embeddings": 64,
                                                 "beta_fast": 32, "beta_slow": 1, "mscale": 1.0,
                                                 "mscale_all_dim": 1.0}}),
    "deepseek_v2": dict(layers=2, dense=1, q_lora=None, kv_lora=32, nope=8, rope=16, v=16,
                        k=2, softmax=True, norm=False, groups=0, topk_group=0, scale=1.0,
                        bias=False, shared=MOE_FFN,
                        config={"model_type": "deepseek_v2",
                                "architectures": ["DeepseekV2ForCausalLM"],
                                "n_group": 1, "topk_group": 1, "topk_method": "greedy",
                                "scoring_func": "softmax", "norm_topk_prob": False,
                                "routed_scaling_factor": 1.0}),
}


def weights(spec, seed):
    g = np.random.default_rng(seed)

    def n(*shape, s=0.2):
        return (g.standard_normal(shape) * s).astype(np.float32)

    qk = spec["nope"] + spec["rope"]
    w = {"model.embed_tokens.weight": n(V, DIM, s=0.5), "model.norm.weight": 1 + n(DIM, s=0.1)}
    for l in range(spec["layers"]):
        p = "model.layers.%d." % l
        a = p + "self_attn."
        w[p + "input_layernorm.weight"] = 1 + n(DIM, s=0.1)
        w[p + "post_attention_layernorm.weight"] = 1 + n(DIM, s=0.1)
        if spec["q_lora"]:
            w[a + "q_a_proj.weight"] = n(spec["q_lora"], DIM)
            w[a + "q_a_layernorm.weight"] = 1 + n(spec["q_lora"], s=0.1)
            w[a + "q_b_proj.weight"] = n(NH * qk, spec["q_lora"], s=0.3)
        else:
            w[a + "q_proj.weight"] = n(NH * qk, DIM)
        w[a + "kv_a_proj_with_mqa.weight"] = n(spec["kv_lora"] + spec["rope"], DIM)
        w[a + "kv_a_layernorm.weight"] = 1 + n(spec["kv_lora"], s=0.1)
        w[a + "kv_b_proj.weight"] = n(NH * (spec["nope"] + spec["v"]), spec["kv_lora"], s=0.3)
        w[a + "o_proj.weight"] = n(DIM, NH * spec["v"])
        if l < spec["dense"]:
            f = 96
            w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"] = n(f, DIM), n(f, DIM)
            w[p + "mlp.down_proj.weight"] = n(DIM, f)
            continue
        w[p + "mlp.gate.weight"] = n(E, DIM, s=0.3)
        if spec["bias"]:
            w[p + "mlp.gate.e_score_correction_bias"] = n(E, s=0.05)
        for e in range(E):
            q = p + "mlp.experts.%d." % e
            w[q + "gate_proj.weight"], w[q + "up_proj.weight"] = n(MOE_FFN, DIM), n(MOE_FFN, DIM)
            w[q + "down_proj.weight"] = n(DIM, MOE_FFN)
        s, f = p + "mlp.shared_experts.", spec["shared"]
        w[s + "gate_proj.weight"], w[s + "up_proj.weight"] = n(f, DIM), n(f, DIM)
        w[s + "down_proj.weight"] = n(DIM, f)
    return w


def rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], -1)


def yarn_get_mscale(scale=1, mscale=1):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rotary(d, rs):
    """DeepseekV3RotaryEmbedding's inverse frequencies (or the YaRN one's) and cos/sin factor."""
    extra = 1.0 / THETA ** (np.arange(0, d, 2, dtype=np.float64) / d)
    if not rs:
        return extra, 1.0
    f, orig = rs["factor"], rs.get("original_max_position_embeddings", 4096)

    def corr_dim(rot):  # yarn_find_correction_dim
        return d * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(THETA))

    low = max(math.floor(corr_dim(rs.get("beta_fast", 32))), 0)
    high = min(math.ceil(corr_dim(rs.get("beta_slow", 1))), d - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(d // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    mask = 1.0 - ramp
    inv = extra / f * (1 - mask) + extra * mask
    return inv, yarn_get_mscale(f, rs.get("mscale", 1)) / yarn_get_mscale(f, rs.get("mscale_all_dim", 0))


def apply_rotary_pos_emb(x, pos, rs):
    """HF DeepSeek-V3's apply_rotary_pos_emb on x (T, heads, d): the interleave, then RoPE."""
    T, h, d = x.shape
    inv, m = rotary(d, rs)
    freqs = pos[:, None] * inv[None, :]
    emb = np.concatenate([freqs, freqs], -1)
    cos, sin = np.cos(emb)[:, None, :] * m, np.sin(emb)[:, None, :] * m
    x = x.reshape(T, h, d // 2, 2).transpose(0, 1, 3, 2).reshape(T, h, d)
    return x * cos + rotate_half(x) * sin


def attention(spec, W, a, h, pos):
    T, nope, rope, v, kr = len(h), spec["nope"], spec["rope"], spec["v"], spec["kv_lora"]
    if spec["q_lora"]:
        q = rmsnorm(h @ W[a + "q_a_proj.weight"].T, W[a + "q_a_layernorm.weight"], LATENT_EPS)
        q = q @ W[a + "q_b_proj.weight"].T
    else:
        q = h @ W[a + "q_proj.weight"].T
    q = q.reshape(T, NH, nope + rope)
    q_nope, q_pe = q[..., :nope], q[..., nope:]
    ckv = h @ W[a + "kv_a_proj_with_mqa.weight"].T
    c, k_pe = ckv[:, :kr], ckv[:, kr:].reshape(T, 1, rope)
    kv = rmsnorm(c, W[a + "kv_a_layernorm.weight"], LATENT_EPS) @ W[a + "kv_b_proj.weight"].T
    kv = kv.reshape(T, NH, nope + v)
    k_nope, val = kv[..., :nope], kv[..., nope:]
    rs = spec["config"].get("rope_scaling")
    q_pe, k_pe = apply_rotary_pos_emb(q_pe, pos, rs), apply_rotary_pos_emb(k_pe, pos, rs)
    qs = np.concatenate([q_nope, q_pe], -1)
    ks = np.concatenate([k_nope, np.broadcast_to(k_pe, (T, NH, rope))], -1)
    scale = (nope + rope) ** -0.5
    if rs and rs.get("mscale_all_dim"):
        scale *= yarn_get_mscale(rs["factor"], rs["mscale_all_dim"]) ** 2
    att = np.zeros((T, NH, v))
    for hh in range(NH):
        sc = qs[:, hh] @ ks[:, hh].T * scale
        sc = sc + np.triu(np.full((T, T), -np.inf), 1)
        pr = np.exp(sc - sc.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        att[:, hh] = pr @ val[:, hh]
    return att.reshape(T, -1) @ W[a + "o_proj.weight"].T


def forward(spec, w, toks):
    T = len(toks)
    pos = np.arange(T, dtype=np.float64)
    W = {k: v.astype(np.float64) for k, v in w.items()}
    x = W["model.embed_tokens.weight"][toks]
    for l in range(spec["layers"]):
        p = "model.layers.%d." % l
        x = x + attention(spec, W, p + "self_attn.", rmsnorm(x, W[p + "input_layernorm.weight"]),
                          pos)
        h = rmsnorm(x, W[p + "post_attention_layernorm.weight"])
        if l < spec["dense"]:
            x = x + mlp(h, W[p + "mlp.gate_proj.weight"], W[p + "mlp.up_proj.weight"],
                        W[p + "mlp.down_proj.weight"])
            continue
        logits = h @ W[p + "mlp.gate.weight"].T
        bias = W.get(p + "mlp.gate.e_score_correction_bias")
        out = np.zeros_like(h)
        for t in range(T):
            ids, wt, _, _ = route(spec, logits[t], bias, False)
            for i, e in zip(ids, wt):
                q = p + "mlp.experts.%d." % i
                out[t] += e * mlp(h[t:t + 1], W[q + "gate_proj.weight"], W[q + "up_proj.weight"],
                                  W[q + "down_proj.weight"])[0]
        s = p + "mlp.shared_experts."
        out += mlp(h, W[s + "gate_proj.weight"], W[s + "up_proj.weight"],
                   W[s + "down_proj.weight"])
        x = x + out
    h = rmsnorm(x, W["model.norm.weight"])
    return h @ W["model.embed_tokens.weight"].T


def main():
    tok = os.path.join(HERE, "spm_tiny_tokenizer.json")
    for seed, (name, spec) in enumerate(MODELS.items()):
        d = os.path.join(HERE, "mla_tiny_" + name)
        os.makedirs(d, exist_ok=True)
        cfg = {"num_hidden_layers": spec["layers"], "hidden_size": DIM, "num_attention_heads": NH,
               "num_key_value_heads": NH, "vocab_size": V, "max_position_embeddings": CTX,
               "rms_norm_eps": EPS, "rope_theta": THETA, "tie_word_embeddings": True,
               "torch_dtype": "float32", "intermediate_size": 96, "n_routed_experts": E,
               "num_experts_per_tok": spec["k"], "moe_intermediate_size": MOE_FFN,
               "n_shared_experts": spec["shared"] // MOE_FFN, "first_k_dense_replace": 1,
               "moe_layer_freq": 1, "attention_bias": False, "q_lora_rank": spec["q_lora"],
               "kv_lora_rank": spec["kv_lora"], "qk_nope_head_dim": spec["nope"],
               "qk_rope_head_dim": spec["rope"], "v_head_dim": spec["v"], "rope_scaling": None}
        cfg.update(spec["config"])
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=1)
        shutil.copyfile(tok, os.path.join(d, "tokenizer.json"))
        w = weights(spec, 20261208 + seed)
        write_safetensors(os.path.join(d, "model.safetensors"), w)
        toks = np.random.default_rng(11 + seed).integers(3, V - 1, PROMPT_LEN)
        logits = forward(spec, w, toks)
        pos = positions(logits)
        golden = {"model": "mla_tiny_" + name, "tokens": [int(t) for t in toks], "n_vocab": V,
                  "positions": pos, "meta": {"writer": "tests/reference/make_mla_golden.py"}}
        with open(os.path.join(HERE, "mla_tiny_%s_golden.json" % name), "w") as f:
            json.dump(golden, f, indent=None)
        logits.astype("<f4").tofile(os.path.join(HERE, "mla_tiny_%s_logits.bin" % name))
        print("%s: min margin %.4f" % (name, min(p["margin"] for p in pos)))


if __name__ == "__main__":
    main()
