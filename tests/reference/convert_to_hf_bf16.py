#!/usr/bin/env python3
"""Converts a llama GGUF (the default model) into a Hugging Face bf16 directory, sharded as
transformers' save_pretrained shards it: what tests/unit/test_forward_hf_bf16 loads, against the
float64 golden of make_hf_bf16_golden.py.

Needs numpy and gguf-py only (no torch, transformers or safetensors: the safetensors format is
written here, it is 8 bytes of header length, a JSON header and the raw data).

    python3 tests/reference/convert_to_hf_bf16.py GGUF OUT_DIR [--max-shard-mb 100]

What it writes in OUT_DIR (created; files of the same names replaced):
  config.json                       LlamaForCausalLM's fields, from the GGUF metadata
  generation_config.json            bos, eos and pad ids
  model-0000N-of-0000M.safetensors  the tensors in bf16 under their Hugging Face names, in the
                                    order of the module tree (embeddings, layer 0..L-1, norm),
                                    a new shard whenever the next tensor would pass max-shard-mb
                                    (at least 2 shards: the point is to read a sharded model)
  model.safetensors.index.json      {"metadata": {"total_size"}, "weight_map": name -> shard}
  tokenizer.json                    tests/reference/smollm2_tokenizer.json (SmolLM2's tokenizer in
                                    tokenizer.json form, made from this GGUF by
                                    make_tokenizer_golden.py), checked against the GGUF vocabulary
  tokenizer_config.json, special_tokens_map.json: special tokens and the chat template

Weights: each GGUF tensor dequantized by gguf-py to float32, rounded to bf16 (round to nearest
even, as torch's .to(torch.bfloat16)), and for attn_q / attn_k the row permutation that llama.cpp's
convert_hf_to_gguf.py applies (LlamaModel.permute: Hugging Face keeps each head's rotary pairs as
two halves, GGUF interleaves them) undone, so the files hold what Hugging Face itself holds.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER_JSON = os.path.join(HERE, "smollm2_tokenizer.json")

HF_LAYER_NAMES = {  # GGUF blk.N.<key> -> model.layers.N.<value>
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
LAYER_ORDER = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down",
               "attn_norm", "ffn_norm"]  # the module tree's order: self_attn, mlp, the two norms


def bf16_bits(a):
    """float32 array -> uint16 bf16 bit patterns, round to nearest, ties to even."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.all(np.isfinite(a)):
        raise ValueError("non-finite weight")
    u = a.view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_round(a):
    """The float32 values of bf16_bits(a): what a bf16 checkpoint of a holds."""
    return (bf16_bits(a).astype(np.uint32) << 16).view(np.float32).reshape(np.shape(a))


def unpermute_rows(w, n_head):
    """Inverse of llama.cpp's LlamaModel.permute: GGUF row 2i+s of a head is HF row s*hd/2+i."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_gguf(path):
    r = GGUFReader(path)
    meta = {}
    for k, v in r.fields.items():
        try:
            meta[k] = v.contents()
        except Exception:  # noqa: BLE001 - fields gguf-py cannot render are not needed here
            pass
    if meta.get("general.architecture") != "llama":
        sys.exit("%s: architecture %r; this converter writes llama" % (path, meta.get("general.architecture")))
    if any(k.startswith("llama.rope.scaling") for k in meta):
        sys.exit("%s: rope scaling is not converted" % path)
    return r, meta


def f32_literal(x):
    """A float32 metadata value as the decimal Hugging Face's config holds (1e-05, not 9.99e-06)."""
    return float(str(np.float32(x)))


def hf_config(meta, tied):
    n_head, dim = meta["llama.attention.head_count"], meta["llama.embedding_length"]
    hd = meta.get("llama.rope.dimension_count", dim // n_head)
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "head_dim": hd,
        "hidden_act": "silu",
        "hidden_size": dim,
        "intermediate_size": meta["llama.feed_forward_length"],
        "max_position_embeddings": meta["llama.context_length"],
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": n_head,
        "num_hidden_layers": meta["llama.block_count"],
        "num_key_value_heads": meta.get("llama.attention.head_count_kv", n_head),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
        "pretraining_tp": 1,
        "rms_norm_eps": f32_literal(meta["llama.attention.layer_norm_rms_epsilon"]),
        "rope_scaling": None,
        "rope_theta": f32_literal(meta.get("llama.rope.freq_base", 10000.0)),
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": meta.get("llama.vocab_size", len(meta["tokenizer.ggml.tokens"])),
    }


def plan_tensors(r, meta):
    """[(hf_name, gguf tensor, n_head to unpermute or 0)] in the module tree's order."""
    by_name = {t.name: t for t in r.tensors}
    n_head = meta["llama.attention.head_count"]
    n_kv = meta.get("llama.attention.head_count_kv", n_head)
    out = [("model.embed_tokens.weight", by_name.pop("token_embd.weight"), 0)]
    for layer in range(meta["llama.block_count"]):
        for key in LAYER_ORDER:
            g = "blk.%d.%s.weight" % (layer, key)
            heads = n_head if key == "attn_q" else n_kv if key == "attn_k" else 0
            out.append(("model.layers.%d.%s" % (layer, HF_LAYER_NAMES[key + ".weight"]),
                        by_name.pop(g), heads))
    out.append(("model.norm.weight", by_name.pop("output_norm.weight"), 0))
    if "output.weight" in by_name:
        out.append(("lm_head.weight", by_name.pop("output.weight"), 0))
    by_name.pop("rope_freqs.weight", None)  # recomputed from the config by Hugging Face
    if by_name:
        sys.exit("tensors this converter does not place: %s" % ", ".join(sorted(by_name)))
    return out


def hf_tensor(t, heads):
    """The tensor as Hugging Face holds it: float32 values already rounded to bf16."""
    a = dequantize(t.data, t.tensor_type).astype(np.float32)
    shape = [int(x) for x in reversed(t.shape)]  # GGUF lists the innermost dimension first
    a = a.reshape(shape) if len(shape) > 1 else a.ravel()
    if heads:
        a = unpermute_rows(a, heads)
    return bf16_round(a), shape


def write_shards(out_dir, plan, max_bytes):
    sizes = [2 * int(np.prod([int(x) for x in t.shape])) for _, t, _ in plan]
    shards, cur, cur_bytes = [], [], 0
    for i, nb in enumerate(sizes):
        if cur and cur_bytes + nb > max_bytes:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(i)
        cur_bytes += nb
    shards.append(cur)
    if len(shards) < 2:
        sys.exit("the model fits one shard of %d MB: lower --max-shard-mb" % (max_bytes >> 20))
    weight_map, total = {}, 0
    for si, idx in enumerate(shards):
        fname = "model-%05d-of-%05d.safetensors" % (si + 1, len(shards))
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for i in idx:
            name, t, _ = plan[i]
            shape = [int(x) for x in reversed(t.shape)]
            header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + sizes[i]]}
            off += sizes[i]
            weight_map[name] = fname
        hj = json.dumps(header, separators=(",", ":")).encode()
        hj += b" " * (-len(hj) % 8)  # data 8-byte aligned, as the safetensors library pads
        with open(os.path.join(out_dir, fname), "wb") as f:
            f.write(struct.pack("<Q", len(hj)) + hj)
            for i in idx:
                _, t, heads = plan[i]
                a, _ = hf_tensor(t, heads)
                f.write(bf16_bits(a).tobytes())
        total += off
        print("%s: %d tensors, %.1f MB" % (fname, len(idx), off / 1e6))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    dump_json(os.path.join(out_dir, "model.safetensors.index.json"), index)


def dump_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_tokenizer(out_dir, meta, tokenizer_json):
    tokens = meta["tokenizer.ggml.tokens"]
    with open(tokenizer_json, encoding="utf-8") as f:
        tok = json.load(f)
    vocab = tok["model"]["vocab"]
    if len(vocab) != len(tokens) or any(vocab.get(s) != i for i, s in enumerate(tokens)):
        sys.exit("%s: its vocabulary is not the GGUF's" % tokenizer_json)
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False)

    def tok_of(key):
        i = meta.get("tokenizer.ggml.%s_token_id" % key)
        return tokens[i] if i is not None else None

    special = {"bos_token": tok_of("bos"), "eos_token": tok_of("eos"),
               "unk_token": tok_of("unknown"), "pad_token": tok_of("padding")}
    dump_json(os.path.join(out_dir, "special_tokens_map.json"), special)
    cfg = {"add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
           "add_prefix_space": False, "clean_up_tokenization_spaces": False,
           "model_max_length": meta["llama.context_length"], "tokenizer_class": "GPT2Tokenizer",
           **special}
    if "tokenizer.chat_template" in meta:
        cfg["chat_template"] = meta["tokenizer.chat_template"]
    dump_json(os.path.join(out_dir, "tokenizer_config.json"), cfg)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf")
    ap.add_argument("out_dir")
    ap.add_argument("--max-shard-mb", type=int, default=100)
    ap.add_argument("--tokenizer-json", default=TOKENIZER_JSON)
    args = ap.parse_args()
    r, meta = read_gguf(args.gguf)
    os.makedirs(args.out_dir, exist_ok=True)
    plan = plan_tensors(r, meta)
    tied = not any(name == "lm_head.weight" for name, _, _ in plan)
    dump_json(os.path.join(args.out_dir, "config.json"), hf_config(meta, tied))
    dump_json(os.path.join(args.out_dir, "generation_config.json"),
              {"_from_model_config": True, "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
               "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
               "pad_token_id": meta.get("tokenizer.ggml.padding_token_id")})
    write_tokenizer(args.out_dir, meta, args.tokenizer_json)
    write_shards(args.out_dir, plan, args.max_shard_mb << 20)


if __name__ == "__main__":
    main()
