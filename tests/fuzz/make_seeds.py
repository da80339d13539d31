#!/usr/bin/env python3
"""Writes the seed corpora for fuzz_gguf, fuzz_safetensors, fuzz_gguf_config and fuzz_config_json:
small valid files that reach every branch of the parsers (all metadata types, nested arrays, every
tensor type, alignments, GGUF v2 and v3; safetensors with metadata, scalars, empty tensors, every
supported dtype, FP8 checkpoints' F8_E4M3 codes with their weight_scale / weight_scale_inv
tensors, int8 checkpoints' I8 codes with weight_scale / weight_zero_point; configs of small and
planning shapes, FP8 and compressed-tensors int8 quantization_config). Deterministic;
run from anywhere: python3 tests/fuzz/make_seeds.py"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
          BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}
# GGML tensor types: id -> (block elems, block bytes)
TTYPES = {0: (1, 4), 1: (1, 2), 30: (1, 2), 8: (32, 34), 2: (32, 18), 3: (32, 20),
          12: (256, 144), 13: (256, 176), 14: (256, 210), 6: (32, 22), 7: (32, 24)}


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gval(t, v):
    if t == STRING:
        return gstr(v)
    if t == ARRAY:
        et, items = v
        out = struct.pack("<IQ", et, len(items))
        return out + b"".join(gval(et, x) for x in items)
    return struct.pack(SCALAR[t], v)


def gguf(kvs, tensors, version=3, align=32):
    """kvs: [(key, type, value)]; tensors: [(name, dims, ggml type)]."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for k, t, v in kvs:
        out += gstr(k) + struct.pack("<I", t) + gval(t, v)
    offset, datas = 0, []
    for name, dims, tt in tensors:
        be, bb = TTYPES[tt]
        rows = 1
        for d in dims[1:]:
            rows *= d
        nbytes = dims[0] // be * bb * rows
        out += gstr(name) + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", tt, offset)
        datas.append((offset, bytes((i * 31 + 7) & 0xFF for i in range(nbytes))))
        offset = (offset + nbytes + align - 1) // align * align
    out += b"\0" * (-len(out) % align)
    data = bytearray()
    for off, d in datas:
        data += b"\0" * (off - len(data)) + d
    return out + bytes(data)


def safetensors(entries, metadata=None, pad=8):
    """entries: [(name, dtype, shape)], data laid out in order."""
    header, blobs, off = {}, b"", 0
    if metadata is not None:
        header["__metadata__"] = metadata
    size = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "I8": 1}
    for name, dt, shape in entries:
        n = size[dt]
        for d in shape:
            n *= d
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}
        blobs += bytes((i * 13 + 1) & 0xFF for i in range(n))
        off += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % pad)
    return struct.pack("<Q", len(h)) + h + blobs


def write(sub, name, data):
    d = os.path.join(HERE, "corpus", sub)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    all_kvs = [
        ("general.architecture", STRING, "llama"),
        ("t.u8", U8, 200), ("t.i8", I8, -5), ("t.u16", U16, 60000), ("t.i16", I16, -300),
        ("t.u32", U32, 4000000000), ("t.i32", I32, -70000), ("t.f32", F32, 1.5),
        ("t.bool", BOOL, True), ("t.u64", U64, 1 << 40), ("t.i64", I64, -(1 << 40)),
        ("t.f64", F64, 2.25),
        ("a.i32", ARRAY, (I32, [1, -2, 3])),
        ("a.f32", ARRAY, (F32, [0.5, -4.0])),
        ("a.str", ARRAY, (STRING, ["alpha", "", "\u2581hi"])),
        ("a.bool", ARRAY, (BOOL, [False, True])),
        ("a.empty", ARRAY, (U64, [])),
        ("a.nested", ARRAY, (ARRAY, [(I16, [1, 2]), (STRING, ["x"])])),
        ("a.deep", ARRAY, (ARRAY, [(ARRAY, [(U8, [9])])])),
    ]
    tensors = [
        ("w.f32", [4, 3], 0), ("w.f16", [8], 1), ("w.bf16", [2, 2, 2], 30),
        ("w.q8_0", [64, 2], 8), ("w.q4_0", [32], 2), ("w.q4_1", [32, 1, 1, 2], 3),
    ]
    write("fuzz_gguf", "all_types.gguf", gguf(all_kvs, tensors))
    write("fuzz_gguf", "v2.gguf", gguf(all_kvs[:4], tensors[:2], version=2))
    write("fuzz_gguf", "align64.gguf",
          gguf([("general.alignment", U32, 64)] + all_kvs[12:15], tensors[3:], align=64))
    write("fuzz_gguf", "align1.gguf",
          gguf([("general.alignment", U32, 1)], [("a", [3], 1), ("b", [1], 0)], align=1))
    write("fuzz_gguf", "kv_only.gguf", gguf(all_kvs, []))
    write("fuzz_gguf", "kquants.gguf", gguf(
        all_kvs[:2], [("w.q4_k", [256, 2], 12), ("w.q5_k", [512], 13), ("w.q6_k", [256, 1, 2], 14),
                      ("w.q5_0", [576, 2], 6), ("w.q5_1", [96], 7)]))
    write("fuzz_gguf", "llama_like.gguf", gguf(
        [("general.architecture", STRING, "llama"), ("llama.block_count", U32, 1),
         ("llama.embedding_length", U32, 32),
         ("tokenizer.ggml.tokens", ARRAY, (STRING, ["<s>", "</s>", "a", "b"])),
         ("tokenizer.ggml.scores", ARRAY, (F32, [0.0, 0.0, -1.0, -2.0]))],
        [("token_embd.weight", [32, 4], 8), ("blk.0.attn_q.weight", [32, 32], 3),
         ("output_norm.weight", [32], 0)]))

    write("fuzz_safetensors", "all_types.safetensors", safetensors(
        [("a", "F32", [2, 3]), ("b", "BF16", [4]), ("c", "F16", []), ("e", "F32", [0, 5]),
         ("d", "F16", [1, 2, 1, 3])], metadata={"format": "pt"}))
    write("fuzz_safetensors", "no_metadata.safetensors", safetensors(
        [("model.embed_tokens.weight", "BF16", [4, 8]), ("model.norm.weight", "F32", [8])]))
    write("fuzz_safetensors", "empty.safetensors", safetensors([], metadata={}))
    write("fuzz_safetensors", "unpadded.safetensors",
          safetensors([("x", "F16", [3])], pad=1))
    # FP8 checkpoints: E4M3 codes beside per-tensor, per-channel and 128 x 128-block scales
    fp8 = "model.layers.0."
    write("fuzz_safetensors", "fp8_scales.safetensors", safetensors(
        [(fp8 + "self_attn.q_proj.weight", "F8_E4M3", [4, 32]),
         (fp8 + "self_attn.q_proj.weight_scale", "F32", []),
         (fp8 + "self_attn.q_proj.input_scale", "F32", []),
         (fp8 + "self_attn.k_proj.weight", "F8_E4M3", [2, 64]),
         (fp8 + "self_attn.k_proj.weight_scale", "BF16", [2, 1]),
         (fp8 + "mlp.down_proj.weight", "F8_E4M3", [3, 160]),
         (fp8 + "mlp.down_proj.weight_scale", "F16", [3])], metadata={"format": "pt"}))
    write("fuzz_safetensors", "fp8_block.safetensors", safetensors(
        [(fp8 + "mlp.up_proj.weight", "F8_E4M3", [130, 160]),
         (fp8 + "mlp.up_proj.weight_scale_inv", "F32", [2, 2]),
         ("model.norm.weight", "BF16", [160]), ("e", "F8_E4M3", [0, 32]),
         ("s", "F8_E4M3", [])]))
    # int8 checkpoints (compressed-tensors int-quantized): I8 codes beside per-channel,
    # per-tensor and per-group scales and a zero point
    write("fuzz_safetensors", "int8_scales.safetensors", safetensors(
        [(fp8 + "self_attn.q_proj.weight", "I8", [4, 32]),
         (fp8 + "self_attn.q_proj.weight_scale", "BF16", [4, 1]),
         (fp8 + "self_attn.q_proj.weight_zero_point", "I8", [4, 1]),
         (fp8 + "self_attn.k_proj.weight", "I8", [2, 64]),
         (fp8 + "self_attn.k_proj.weight_scale", "F16", [1]),
         (fp8 + "mlp.down_proj.weight", "I8", [3, 256]),
         (fp8 + "mlp.down_proj.weight_scale", "F32", [3, 2]),
         ("e", "I8", [0, 32]), ("s", "I8", [])], metadata={"format": "pt"}))


def config_seeds():
    """fuzz_gguf_config: metadata-only GGUF files of small llama, qwen2 and MoE shapes (what
    tsr_config_from_gguf reads); fuzz_config_json: config.json files of the same shapes and the
    planning shapes in tests/reference/configs."""
    def llama_kvs(arch, extra=()):
        return [("general.architecture", STRING, arch),
                (arch + ".block_count", U32, 2), (arch + ".embedding_length", U32, 64),
                (arch + ".feed_forward_length", U32, 128),
                (arch + ".attention.head_count", U32, 4),
                (arch + ".attention.head_count_kv", U32, 2),
                (arch + ".context_length", U32, 256),
                (arch + ".rope.freq_base", F32, 10000.0),
                (arch + ".attention.layer_norm_rms_epsilon", F32, 1e-5),
                (arch + ".vocab_size", U32, 300)] + list(extra)
    write("fuzz_gguf_config", "llama.gguf", gguf(llama_kvs("llama"), []))
    write("fuzz_gguf_config", "qwen2.gguf", gguf(llama_kvs("qwen2"), []))
    write("fuzz_gguf_config", "qwen2moe.gguf", gguf(llama_kvs("qwen2moe", [
        ("qwen2moe.expert_count", U32, 8), ("qwen2moe.expert_used_count", U32, 2),
        ("qwen2moe.expert_feed_forward_length", U32, 32),
        ("qwen2moe.expert_shared_feed_forward_length", U32, 64)]), []))
    write("fuzz_gguf_config", "mixtral.gguf", gguf(llama_kvs("llama", [
        ("llama.expert_count", U32, 8), ("llama.expert_used_count", U32, 2)]), []))
    write("fuzz_gguf_config", "linear_rope.gguf", gguf(llama_kvs("llama", [
        ("llama.rope.scaling.type", STRING, "linear"), ("llama.rope.scaling.factor", F32, 4.0),
        ("llama.rope.dimension_count", U32, 16), ("llama.attention.key_length", U32, 16)]), []))
    write("fuzz_gguf_config", "tokens_vocab.gguf", gguf(
        [kv for kv in llama_kvs("mistral") if not kv[0].endswith("vocab_size")] +
        [("tokenizer.ggml.tokens", ARRAY, (STRING, ["a", "b", "c"]))], []))
    base = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64,
            "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 300, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "tie_word_embeddings": True}
    seeds = {"llama.json": base,
             "qwen2.json": dict(base, model_type="qwen2", tie_word_embeddings=False),
             "linear.json": dict(base, rope_scaling={"type": "linear", "factor": 2.0}),
             "llama3.json": dict(base, rope_scaling={
                 "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
             "head_dim.json": dict(base, head_dim=32),
             "qwen2_moe.json": dict(base, model_type="qwen2_moe", num_experts=8,
                                    num_experts_per_tok=2, moe_intermediate_size=32,
                                    shared_expert_intermediate_size=64),
             "qwen3_moe.json": dict(base, model_type="qwen3_moe", num_experts=8,
                                    num_experts_per_tok=2, moe_intermediate_size=32),
             "deepseek_small.json": dict(base, model_type="deepseek_v3", n_routed_experts=8,
                                         num_experts_per_tok=2, n_shared_experts=1,
                                         moe_intermediate_size=32, first_k_dense_replace=1,
                                         n_group=2, topk_group=1, q_lora_rank=32,
                                         kv_lora_rank=16, qk_nope_head_dim=16,
                                         qk_rope_head_dim=8, v_head_dim=16,
                                         rope_scaling={"type": "yarn", "factor": 4.0}),
             "deepseek_routing.json": dict(base, model_type="deepseek_v3", n_routed_experts=8,
                                           num_experts_per_tok=2, n_shared_experts=1,
                                           moe_intermediate_size=32, first_k_dense_replace=1,
                                           n_group=4, topk_group=2, topk_method="noaux_tc",
                                           scoring_func="sigmoid", norm_topk_prob=True,
                                           routed_scaling_factor=2.5),
             "fp8_block.json": dict(base, quantization_config={
                 "quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                 "weight_block_size": [128, 128]}),
             "fp8_static.json": dict(base, quantization_config={
                 "quant_method": "fp8", "activation_scheme": "static",
                 "modules_to_not_convert": ["lm_head"]}),
             "int8_w8a8.json": dict(base, quantization_config={
                 "quant_method": "compressed-tensors", "format": "int-quantized",
                 "quantization_status": "compressed", "ignore": ["lm_head"],
                 "sparsity_config": {}, "kv_cache_scheme": None,
                 "config_groups": {"group_0": {
                     "targets": ["Linear"],
                     "input_activations": {"num_bits": 8, "type": "int", "symmetric": True,
                                           "strategy": "token", "dynamic": True},
                     "weights": {"num_bits": 8, "type": "int", "symmetric": True,
                                 "strategy": "channel", "group_size": None, "dynamic": False,
                                 "actorder": None, "block_structure": None}}}}),
             "int8_w8a16_group.json": dict(base, quantization_config={
                 "quant_method": "compressed-tensors", "format": "int-quantized",
                 "config_groups": {"group_0": {
                     "targets": ["Linear"], "input_activations": None,
                     "weights": {"num_bits": 8, "type": "int", "symmetric": True,
                                 "strategy": "group", "group_size": 128}}}})}
    for name, cfg in seeds.items():
        write("fuzz_config_json", name, json.dumps(cfg, indent=1).encode())
    ref = os.path.join(HERE, "..", "reference", "configs")
    for name in sorted(os.listdir(ref)):
        with open(os.path.join(ref, name), "rb") as f:
            write("fuzz_config_json", name, f.read())


if __name__ == "__main__":
    main()
    config_seeds()
