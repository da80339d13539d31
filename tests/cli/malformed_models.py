#!/usr/bin/python3
"""The malformed-model suite: builds a tiny valid GGUF model and Hugging Face directory, then one
mutation of them per case, runs `tessera generate` or `tessera plan` on each and checks the exit
code, a specific error text, the CPU time (user + system, under 1 s for an error;
TSR_MALFORMED_TIME_LIMIT changes it, for sanitizer builds; CPU time, not wall time, so that load
beside the test cannot fail it: a case still running after 10 s of wall time is killed and fails)
and the peak RSS a case adds to what the binary takes before it reads
anything (`tessera --version`'s RSS: ~16 MB for a CPU build, ~230 MB where the CUDA libraries
are linked in, all of it the loader's): under 300 MB.

Nothing here is committed as a binary: every file is written at test time, with a GGUF writer of
our own (no pip package). Classes, as issue 18 lists them: nested messages (no aliasing), bounds
on declared sizes, non-regular files (a FIFO must not hang), values that change the computation,
and chat templates.

Usage: malformed_models.py path/to/tessera [workdir]   (exit 0 when every case passes)
"""
import json
import os
import signal
import struct
import sys
import tempfile
import time

TIME_LIMIT_S = 1.0
RSS_LIMIT_MB = 300

# ---- a GGUF writer ---------------------------------------------------------------------------

# The value encoders of the fuzz seeds' writer; this one adds tensor data and lying counts.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fuzz"))
from make_seeds import (ARRAY, BOOL, F32, I32, STRING, U8, U32, U64, gstr,  # noqa: E402
                        gval)

GGML_F32, GGML_F16, GGML_Q4_0 = 0, 1, 2


def gguf_value(vtype, v):
    if vtype == ARRAY and v[0] == U8 and isinstance(v[1], bytes):  # millions of bytes: no loop
        return struct.pack("<IQ", U8, len(v[1])) + v[1]
    return gval(vtype, v)


def write_gguf(path, kvs, tensors, n_kv=None, n_tensors=None):
    """kvs: [(key, vtype, value)]; tensors: [(name, dims (innermost first), ggml type, bytes)]."""
    out = bytearray(b"GGUF" + struct.pack("<I", 3))
    out += struct.pack("<QQ", len(tensors) if n_tensors is None else n_tensors,
                       len(kvs) if n_kv is None else n_kv)
    for key, vtype, value in kvs:
        out += gstr(key) + struct.pack("<I", vtype) + gguf_value(vtype, value)
    offset = 0
    for name, dims, gtype, data in tensors:
        out += gstr(name) + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", gtype, offset)
        offset += (len(data) + 31) // 32 * 32
    out += b"\0" * ((32 - len(out) % 32) % 32)
    for _, _, _, data in tensors:
        out += data + b"\0" * ((32 - len(data) % 32) % 32)
    with open(path, "wb") as f:
        f.write(out)


# ---- the tiny model --------------------------------------------------------------------------

DIM, FFN, HEADS, KV_HEADS, LAYERS, CTX = 64, 128, 4, 2, 1, 256
HEAD_DIM = DIM // HEADS
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
GEMMA = ("{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + message['role'] + "
         "'\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}")


def byte_tokens():
    """GPT-2's printable spelling of each byte, as byte-level BPE vocabularies write them."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    spell, n = {}, 0
    for b in range(256):
        if b in keep:
            spell[b] = chr(b)
        else:
            spell[b] = chr(256 + n)
            n += 1
    return [spell[b] for b in range(256)]


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOKENS = byte_tokens() + SPECIALS
VOCAB = len(TOKENS)
EOS_ID = TOKENS.index("<|im_end|>")


def floats(n, seed, scale=0.05, base=0.0):
    # A small LCG: deterministic, no numpy.
    out, x = [], seed * 2654435761 % 2**32
    for _ in range(n):
        x = (1103515245 * x + 12345) % 2**31
        out.append(base + scale * (x / 2**31 * 2 - 1))
    return struct.pack("<%df" % n, *out)


def f32(n, value):
    return struct.pack("<%df" % n, *([value] * n))


def tensor(name, rows, cols, seed, norm=False):
    data = f32(cols, 1.0) if norm else floats(rows * cols, seed)
    dims = [cols] if rows == 1 else [cols, rows]
    return [name, dims, GGML_F32, data]


def base_tensors():
    t = [tensor("token_embd.weight", VOCAB, DIM, 1), tensor("output_norm.weight", 1, DIM, 0, True)]
    kv = KV_HEADS * HEAD_DIM
    for l in range(LAYERS):
        p = "blk.%d." % l
        t += [tensor(p + "attn_norm.weight", 1, DIM, 0, True),
              tensor(p + "attn_q.weight", DIM, DIM, 10 + l), tensor(p + "attn_k.weight", kv, DIM, 20 + l),
              tensor(p + "attn_v.weight", kv, DIM, 30 + l),
              tensor(p + "attn_output.weight", DIM, DIM, 40 + l),
              tensor(p + "ffn_norm.weight", 1, DIM, 0, True),
              tensor(p + "ffn_gate.weight", FFN, DIM, 50 + l), tensor(p + "ffn_up.weight", FFN, DIM, 60 + l),
              tensor(p + "ffn_down.weight", DIM, FFN, 70 + l)]
    return t


def base_kvs():
    return [["general.architecture", STRING, "llama"],
            ["llama.block_count", U32, LAYERS],
            ["llama.embedding_length", U32, DIM],
            ["llama.feed_forward_length", U32, FFN],
            ["llama.attention.head_count", U32, HEADS],
            ["llama.attention.head_count_kv", U32, KV_HEADS],
            ["llama.context_length", U32, CTX],
            ["llama.rope.freq_base", F32, 10000.0],
            ["llama.attention.layer_norm_rms_epsilon", F32, 1e-5],
            ["tokenizer.ggml.model", STRING, "gpt2"],
            ["tokenizer.ggml.tokens", ARRAY, (STRING, TOKENS)],
            ["tokenizer.ggml.token_type", ARRAY, (I32, [1] * 256 + [3] * len(SPECIALS))],
            ["tokenizer.ggml.merges", ARRAY, (STRING, [])],
            ["tokenizer.ggml.eos_token_id", U32, EOS_ID],
            ["tokenizer.ggml.add_bos_token", BOOL, False],
            ["tokenizer.chat_template", STRING, CHATML]]


def gguf_case(path, set_kv=None, drop_kv=(), tensors_fn=None, extra_kvs=(), **kw):
    kvs = [kv for kv in base_kvs() if kv[0] not in drop_kv]
    for key, vtype, value in (set_kv or []):
        for kv in kvs:
            if kv[0] == key:
                kv[1], kv[2] = vtype, value
                break
        else:
            kvs.append([key, vtype, value])
    kvs += list(extra_kvs)
    t = base_tensors()
    if tensors_fn:
        t = tensors_fn(t)
    write_gguf(path, kvs, t, **kw)
    return path


def replace_tensor(name, rows, cols, data, gtype=GGML_F32):
    def fn(ts):
        out = [x for x in ts if x[0] != name]
        out.append([name, [cols] if rows == 1 else [cols, rows], gtype, data])
        return out
    return fn


# ---- the Hugging Face directory --------------------------------------------------------------

HF_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
            "attn_norm.weight": "input_layernorm.weight", "attn_q.weight": "self_attn.q_proj.weight",
            "attn_k.weight": "self_attn.k_proj.weight", "attn_v.weight": "self_attn.v_proj.weight",
            "attn_output.weight": "self_attn.o_proj.weight",
            "ffn_norm.weight": "post_attention_layernorm.weight", "ffn_gate.weight": "mlp.gate_proj.weight",
            "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight"}


def hf_name(g):
    if g in HF_NAMES:
        return HF_NAMES[g]
    _, l, rest = g.split(".", 2)
    return "model.layers.%s.%s" % (l, HF_NAMES[rest])


def write_safetensors(path, tensors, header_len=None):
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, shape, data in tensors:
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)  # as the reference writer pads: tensor data stays aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h) if header_len is None else header_len) + h)
        for b in blobs:
            f.write(b)


def hf_config(**over):
    c = {"model_type": "llama", "num_hidden_layers": LAYERS, "hidden_size": DIM,
         "intermediate_size": FFN, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
         "vocab_size": VOCAB, "max_position_embeddings": CTX, "rms_norm_eps": 1e-5,
         "rope_theta": 10000.0, "tie_word_embeddings": True}
    for k, v in over.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c


def hf_tokenizer(added_id_override=None):
    vocab = {tok: i for i, tok in enumerate(TOKENS[:256])}
    added = [{"id": 256 + i, "content": s, "special": True} for i, s in enumerate(SPECIALS)]
    if added_id_override is not None:
        added[-1]["id"] = added_id_override
    return {"version": "1.0", "added_tokens": added, "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                              "use_regex": True},
            "post_processor": None, "decoder": {"type": "ByteLevel"},
            "model": {"type": "BPE", "vocab": vocab, "merges": []}}


def hf_dir(root, name, config=None, tok=None, tok_config=None, tensors_fn=None, skip=()):
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    if "config.json" not in skip:
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config or hf_config(), f)
    if "tokenizer.json" not in skip:
        with open(os.path.join(d, "tokenizer.json"), "w") as f:
            json.dump(tok or hf_tokenizer(), f)
    if "tokenizer_config.json" not in skip:
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(tok_config or {"eos_token": "<|im_end|>", "chat_template": CHATML}, f)
    if "model.safetensors" not in skip:
        ts = []
        for name_, dims, _, data in base_tensors():
            ts.append([hf_name(name_), list(reversed(dims)), data])
        if tensors_fn:
            ts = tensors_fn(ts)
        write_safetensors(os.path.join(d, "model.safetensors"), ts)
    return d


def fifo(path):
    if os.path.exists(path):
        os.unlink(path)
    os.mkfifo(path)
    return path


def sparse(path, size):
    with open(path, "wb") as f:
        f.truncate(size)
    return path


# ---- the cases -------------------------------------------------------------------------------


def build_cases(w):
    """Each case: (class, name, argv after the binary, expected exit code, expected stderr text).
    The text is a substring of stderr, as specific as the message allows."""
    cases = []

    def gen(model, *extra):
        return ["generate", "--model", model, "--prompt", "hi", "--max-tokens", "1", *extra]

    def plan(cfg):
        return ["plan", "--config", cfg]

    def both(cls, name, path, code, text, gen_code=None):
        cases.append((cls, name + " (plan)", plan(path), code, text))
        cases.append((cls, name + " (generate)", gen(path), gen_code or code, text))

    p = lambda n: os.path.join(w, n)

    # The baseline must work, or every error below could be an accident.
    good = gguf_case(p("good.gguf"))
    cases.append(("baseline", "tiny GGUF generates", gen(good), 0, "finish"))
    cases.append(("baseline", "tiny GGUF plans", plan(good), 0, None))
    hf_good = hf_dir(w, "hf-good")
    cases.append(("baseline", "tiny HF dir generates", gen(hf_good), 0, "finish"))

    # 1. Nested messages compose without aliasing: the whole line, path and all.
    path = gguf_case(p("gqa.gguf"), set_kv=[["llama.attention.head_count_kv", U32, 3]])
    both("nested message", "heads do not divide", path, 1,
         "tessera plan: %s: config: 4 heads do not divide into 3 KV heads" % path)
    cases[-1] = cases[-1][:4] + ("tessera generate: %s: config: 4 heads do not divide into 3 KV "
                                 "heads" % path,)
    long_dir = p("a" * 200)
    os.makedirs(long_dir, exist_ok=True)
    path = gguf_case(os.path.join(long_dir, "gqa-long-path.gguf"),
                     set_kv=[["llama.attention.head_count_kv", U32, 3]])
    cases.append(("nested message", "heads do not divide, long path (plan)", plan(path), 1,
                  "tessera plan: %s: config: 4 heads do not divide into 3 KV heads" % path))

    # 2. Bounds on declared sizes: INVALID_ARGUMENT naming field, value and bound.
    for key, value, text in [
            ("llama.block_count", 1000000, "GGUF: llama.block_count = 1000000 is over the limit of "
                                           "1024 (Llama 3.1 405B has 126)"),
            ("llama.block_count", 10**9, "llama.block_count = 1000000000 is over the limit of 1024"),
            ("llama.embedding_length", 10**6, "llama.embedding_length = 1000000 is over the limit "
                                              "of 65536"),
            ("llama.feed_forward_length", 10**7, "llama.feed_forward_length = 10000000 is over the "
                                                 "limit of 262144"),
            ("llama.attention.head_count", 100000, "llama.attention.head_count = 100000 is over "
                                                   "the limit of 1024"),
            ("llama.context_length", 10**9, "llama.context_length = 1000000000 is over the limit "
                                            "of 16777216"),
            ("llama.vocab_size", 10**8, "llama.vocab_size = 100000000 is over the limit of "
                                        "1048576"),
            ("llama.expert_count", 10**6, "llama.expert_count = 1000000 is over the limit of "
                                          "4096 (Kimi K2 has 384)")]:
        path = gguf_case(p("big-%s-%d.gguf" % (key, value)), set_kv=[[key, U64, value]])
        both("bounds", "GGUF %s = %d" % (key, value), path, 1, text)
    # Experts (a Mixtral-style llama GGUF): their count needs the count a token uses, within it,
    # and the dense model's tensors have no stacked experts to run.
    path = gguf_case(p("moe.gguf"), set_kv=[["llama.expert_count", U32, 8]])
    both("bounds", "GGUF expert_count 8 without expert_used_count", path, 1,
         "GGUF: llama.expert_used_count missing")
    path = gguf_case(p("moe-k9.gguf"), set_kv=[["llama.expert_count", U32, 8],
                                               ["llama.expert_used_count", U32, 9]])
    both("bounds", "GGUF expert_used_count 9 of 8", path, 1,
         "GGUF: llama.expert_used_count = 9 is more than the 8 experts")
    path = gguf_case(p("moe-no-experts.gguf"), set_kv=[["llama.expert_count", U32, 8],
                                                       ["llama.expert_used_count", U32, 2]])
    cases.append(("bounds", "GGUF experts without their tensors", gen(path), 1,
                  "no tensor 'blk.0.ffn_gate_inp.weight'"))
    path = gguf_case(p("many-kv.gguf"),
                     extra_kvs=[["x.k%d" % i, U8, 0] for i in range(5000)])
    cases.append(("bounds", "GGUF 5000 metadata keys", gen(path), 1,
                  "kv count 5016 is over the limit of 4096"))
    path = p("many-tensors.gguf")
    write_gguf(path, base_kvs(), [["t%d" % i, [1], GGML_F32, b"\0\0\0\0"] for i in range(70000)])
    cases.append(("bounds", "GGUF 70000 tensors", plan(path), 1,
                  "tensor count 70000 is over the limit of 65536 (Llama 3.1 405B has 1,138)"))
    path = gguf_case(p("long-array.gguf"), extra_kvs=[["x.arr", ARRAY, (U8, bytes(5 << 20))]])
    cases.append(("bounds", "GGUF array of 5M elements", gen(path), 1,
                  "key 'x.arr': array length 5242880 is over the limit of 4194304 elements"))
    path = gguf_case(p("long-key.gguf"), extra_kvs=[["k" * 300, U8, 0]])
    cases.append(("bounds", "GGUF 300-byte key", gen(path), 1,
                  "metadata key at offset"))
    cases[-1] = cases[-1][:4] + ("string length 300 is over the limit of 256 bytes",)
    path = gguf_case(p("long-string.gguf"), extra_kvs=[["x.s", STRING, "s" * (1100 * 1024)]])
    cases.append(("bounds", "GGUF 1.1 MB string value", gen(path), 1,
                  "metadata string value at offset"))
    cases[-1] = cases[-1][:4] + ("string length 1126400 is over the limit of 1048576 bytes",)
    path = gguf_case(p("long-name.gguf"), tensors_fn=lambda ts: ts + [["n" * 300, [1], GGML_F32,
                                                                      b"\0" * 4]])
    cases.append(("bounds", "GGUF 300-byte tensor name", plan(path), 1,
                  "tensor name at offset"))
    for key, value, text in [
            ("num_hidden_layers", 1000000, "num_hidden_layers = 1000000 is over the limit of 1024 "
                                           "(Llama 3.1 405B has 126)"),
            ("num_hidden_layers", 10**9, "num_hidden_layers = 1000000000 is over the limit of 1024"),
            ("vocab_size", 10**9, "vocab_size = 1000000000 is over the limit of 1048576"),
            ("num_attention_heads", 4096, "num_attention_heads = 4096 is over the limit of 1024"),
            ("max_position_embeddings", 1 << 30, "max_position_embeddings = 1073741824 is over "
                                                 "the limit of 16777216"),
            ("num_local_experts", 100000, "num_local_experts = 100000 is over the limit of 4096")]:
        d = hf_dir(w, "hf-big-%s-%d" % (key, value), config=hf_config(**{key: value}),
                   skip=("model.safetensors",))
        both("bounds", "config.json %s = %d" % (key, value), d, 1, text)
    # A Mixtral config.json over a dense model's tensors plans, and generate names the router it
    # does not find (MoE models run on the CPU: tests/unit/test_moe.c).
    d = hf_dir(w, "hf-mixtral", config=hf_config(model_type="mixtral", num_local_experts=8,
                                                 num_experts_per_tok=2))
    cases.append(("bounds", "mixtral config.json plans", plan(d), 0, None))
    cases.append(("bounds", "mixtral config.json without experts does not generate", gen(d), 1,
                  "no tensor 'model.layers.0.block_sparse_moe.gate.weight' "
                  "(blk.0.ffn_gate_inp.weight)"))
    d = hf_dir(w, "hf-moe-bad-k", config=hf_config(model_type="mixtral", num_local_experts=8,
                                                   num_experts_per_tok=9),
               skip=("model.safetensors",))
    both("bounds", "mixtral num_experts_per_tok 9 of 8", d, 1,
         "num_experts_per_tok = 9 is more than the 8 experts (num_local_experts)")
    d = hf_dir(w, "hf-huge-config", skip=("config.json",))
    sparse(os.path.join(d, "config.json"), 5 << 20)
    both("bounds", "config.json of 5 MiB", d, 1, "config.json is 5242880 bytes, over the limit of "
         "4194304")
    d = hf_dir(w, "hf-huge-tokenizer", skip=("tokenizer.json",))
    sparse(os.path.join(d, "tokenizer.json"), 129 << 20)
    cases.append(("bounds", "tokenizer.json of 129 MiB", gen(d), 1,
                  "tokenizer.json is 135266304 bytes, over the limit of 134217728"))
    d = hf_dir(w, "hf-huge-header", skip=("model.safetensors",))
    st = os.path.join(d, "model.safetensors")
    sparse(st, (9 << 20) + 8)
    with open(st, "r+b") as f:
        f.write(struct.pack("<Q", 9 << 20))
    cases.append(("bounds", "safetensors header of 9 MiB", gen(d), 1,
                  "header length 9437184 is over the limit of 8388608 bytes"))
    # At the bounds, memory stays small: plan's grows with layers x ranks, a header's parse with
    # its bytes (about 18 per byte in jansson).
    d = hf_dir(w, "hf-1024-layers", config=hf_config(num_hidden_layers=1024, hidden_size=16384,
                                                     intermediate_size=53248,
                                                     num_attention_heads=128,
                                                     num_key_value_heads=8, vocab_size=128256),
               skip=("model.safetensors",))
    cases.append(("bounds", "config.json at the layer bound plans on 128 GPUs",
                  plan(d) + ["--nodes", "16"], 0, None))

    def pad_header(ts):
        n = (8 << 20) // 84  # zero-size entries of ~81 bytes: just under the 8 MiB bound
        return ts + [["pad.%07d" % i, [0], b""] for i in range(n)]

    d = hf_dir(w, "hf-big-header", tensors_fn=pad_header)
    cases.append(("bounds", "safetensors header just under 8 MiB generates", gen(d), 0, "finish"))
    tok = hf_tokenizer(added_id_override=2 << 20)
    d = hf_dir(w, "hf-token-id", tok=tok)
    cases.append(("bounds", "tokenizer.json token id 2^21", gen(d), 1,
                  "has id 2097152, over the vocabulary limit of 1048576 tokens"))

    # 3. Non-regular inputs: an error at once, never a hang.
    path = fifo(p("fifo.gguf"))
    both("non-regular file", "model is a FIFO", path, 1,
         "fifo.gguf: the model file is not a readable regular file: it is a FIFO")
    path = fifo(p("fifo-config.json"))
    cases.append(("non-regular file", "config .json is a FIFO (plan)", plan(path), 1,
                  "fifo-config.json: the config.json is not a readable regular file: it is a FIFO"))
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        d = hf_dir(w, "hf-fifo-" + f.replace(".", "-"), skip=(f,))
        fifo(os.path.join(d, f))
        what = {"model.safetensors": "safetensors file"}.get(f, f)
        cases.append(("non-regular file", "HF %s is a FIFO" % f, gen(d), 1,
                      "%s: the %s is not a readable regular file: it is a FIFO" % (f, what)))
    cases.append(("non-regular file", "HF config.json is a FIFO (plan)",
                  plan(os.path.join(w, "hf-fifo-config-json")), 1,
                  "config.json: the config.json is not a readable regular file: it is a FIFO"))
    cases.append(("non-regular file", "model is a directory without config.json", gen(w), 1,
                  "config.json: cannot open config.json"))
    cases.append(("non-regular file", "model is /dev/zero", gen("/dev/zero"), 1,
                  "/dev/zero: the model file is not a readable regular file: it is a character "
                  "device"))

    # 4. Values that change the computation.
    half = HEAD_DIM // 2
    for name, data, text in [
            ("zeros", f32(half, 0.0), "'rope_freqs.weight'[0] = 0; it must be finite and positive"),
            ("NaN", f32(half, float("nan")), "'rope_freqs.weight'[0] = nan; it must be finite and "
                                             "positive"),
            ("negative", f32(half, -1.0), "'rope_freqs.weight'[0] = -1; it must be finite and "
                                          "positive"),
            ("inf", f32(half, float("inf")), "'rope_freqs.weight'[0] = inf; it must be finite and "
                                             "positive")]:
        path = gguf_case(p("rope-%s.gguf" % name),
                         tensors_fn=replace_tensor("rope_freqs.weight", 1, half, data))
        cases.append(("silent change", "rope_freqs %s" % name, gen(path), 1, text))
    path = gguf_case(p("rope-short.gguf"),
                     tensors_fn=replace_tensor("rope_freqs.weight", 1, half - 2, f32(half - 2, 1.0)))
    cases.append(("silent change", "rope_freqs of the wrong length", gen(path), 1,
                  "'rope_freqs.weight' is 1x6; it must be a vector of 8"))
    path = gguf_case(p("rope-f16.gguf"), tensors_fn=replace_tensor(
        "rope_freqs.weight", 1, half, struct.pack("<%de" % half, *([1.0] * half)), GGML_F16))
    cases.append(("silent change", "rope_freqs F16", gen(path), 1,
                  "'rope_freqs.weight' is F16; it must be F32"))
    nan_norm = bytearray(f32(DIM, 1.0))
    nan_norm[12:16] = struct.pack("<f", float("nan"))
    path = gguf_case(p("norm-nan.gguf"),
                     tensors_fn=replace_tensor("blk.0.ffn_norm.weight", 1, DIM, bytes(nan_norm)))
    cases.append(("silent change", "norm weight with a NaN", gen(path), 1,
                  "'blk.0.ffn_norm.weight'[3] = nan; it must be finite"))
    path = gguf_case(p("norm-shape.gguf"),
                     tensors_fn=replace_tensor("output_norm.weight", 2, DIM // 2, f32(DIM, 1.0)))
    cases.append(("silent change", "norm weight of the wrong shape", gen(path), 1,
                  "'output_norm.weight' is 2x32; it must be a vector of 64"))
    path = gguf_case(p("norm-q4.gguf"), tensors_fn=replace_tensor(
        "blk.0.attn_norm.weight", 1, DIM, bytes(18 * DIM // 32), GGML_Q4_0))
    cases.append(("silent change", "norm weight quantized", gen(path), 1,
                  "'blk.0.attn_norm.weight' is Q4_0; it must be F32, F16 or BF16"))
    d = hf_dir(w, "hf-untied", config=hf_config(tie_word_embeddings=False))
    cases.append(("silent change", "untied HF model without lm_head", gen(d), 1,
                  "tie_word_embeddings is false but there is no lm_head.weight"))
    d = hf_dir(w, "hf-bad-bos", tok_config={"bos_token": "<s>", "add_bos_token": True,
                                            "eos_token": "<|im_end|>"})
    cases.append(("silent change", "add_bos_token with a BOS not in the vocabulary", gen(d), 1,
                  "add_bos_token asks for BOS: %s: bos_token \"<s>\" is not in the vocabulary "
                  "(259 tokens)" % os.path.join(d, "tokenizer_config.json")))
    d = hf_dir(w, "hf-bad-eos", tok_config={"eos_token": "</s>"})
    cases.append(("silent change", "EOS not in the vocabulary", gen(d), 1,
                  "eos_token \"</s>\" is not in the vocabulary (259 tokens)"))
    path = gguf_case(p("bos-missing.gguf"), set_kv=[["tokenizer.ggml.add_bos_token", BOOL, True]])
    cases.append(("silent change", "GGUF add_bos_token without a BOS id", gen(path), 1,
                  "tokenizer.ggml.add_bos_token is set but tokenizer.ggml.bos_token_id is missing"))
    path = gguf_case(p("bos-range.gguf"), set_kv=[["tokenizer.ggml.bos_token_id", U32, 100000]])
    cases.append(("silent change", "GGUF BOS id out of range", gen(path), 1,
                  "tokenizer.ggml.bos_token_id = 100000 is not a token id (vocabulary of 259)"))
    for name, rs, code, text in [
            ("yarn", {"rope_type": "yarn", "factor": 4.0}, 1,
             "rope_scaling type 'yarn' is not supported (default, linear, llama3)"),
            ("no type", {"factor": 4.0}, 1, "\"rope_scaling\" has no rope_type"),
            ("a string", "linear", 1, "\"rope_scaling\" must be an object or null"),
            ("llama3 without its factors", {"rope_type": "llama3", "factor": 8.0}, 1,
             "rope_scaling 'llama3' needs a number \"low_freq_factor\""),
            ("linear without factor", {"type": "linear"}, 1,
             "rope_scaling 'linear' needs a number \"factor\"")]:
        d = hf_dir(w, "hf-rope-" + name.replace(" ", "-"), config=hf_config(rope_scaling=rs),
                   skip=("model.safetensors",))
        both("silent change", "rope_scaling %s" % name, d, code, text)
    path = gguf_case(p("rope-yarn.gguf"), set_kv=[["llama.rope.scaling.type", STRING, "yarn"]])
    both("silent change", "GGUF rope.scaling.type yarn", path, 1,
         "GGUF: llama.rope.scaling.type 'yarn' is not supported")
    path = gguf_case(p("ctx0.gguf"), set_kv=[["llama.context_length", U32, 0]])
    both("silent change", "GGUF context_length 0", path, 1,
         "GGUF: llama.context_length = 0 must be at least 1")
    d = hf_dir(w, "hf-ctx0", config=hf_config(max_position_embeddings=0),
               skip=("model.safetensors",))
    both("silent change", "config.json max_position_embeddings 0", d, 1,
         "max_position_embeddings = 0 must be at least 1")
    path = gguf_case(p("eps-string.gguf"),
                     set_kv=[["llama.attention.layer_norm_rms_epsilon", STRING, "1e-5"]])
    both("silent change", "GGUF rms epsilon of the wrong type", path, 1,
         "GGUF: llama.attention.layer_norm_rms_epsilon is not a number")

    # 5. Chat templates: --chat with one tessera does not render is an error naming its family.
    path = gguf_case(p("gemma-template.gguf"),
                     set_kv=[["tokenizer.chat_template", STRING, GEMMA]])
    cases.append(("chat template", "--chat, Gemma template", gen(path, "--chat"), 2,
                  "has a chat template of the Gemma family, which tessera does not render; pick "
                  "one with --chat-template chatml|llama3|llama2|none"))
    cases.append(("chat template", "--chat-template chatml over a Gemma template",
                  gen(path, "--chat-template", "chatml"), 0, "finish"))
    cases.append(("chat template", "no --chat: raw prompt still served", gen(path), 0, "finish"))
    path = gguf_case(p("odd-template.gguf"),
                     set_kv=[["tokenizer.chat_template", STRING, "{{ messages | tojson }}"]])
    cases.append(("chat template", "--chat, unknown template", gen(path, "--chat"), 2,
                  "has a chat template of the unknown family"))
    path = gguf_case(p("no-template.gguf"), drop_kv=("tokenizer.chat_template",))
    cases.append(("chat template", "--chat, no template", gen(path, "--chat"), 2,
                  "has no chat template; pick one with --chat-template"))
    cases.append(("chat template", "--chat-template none", gen(path, "--chat-template", "none"), 0,
                  "finish"))
    cases.append(("chat template", "--chat-template bogus", gen(good, "--chat-template", "bogus"),
                  2, "--chat-template: unknown chat template 'bogus' (chatml, llama3, llama2, "
                  "none)"))
    d = hf_dir(w, "hf-gemma", tok_config={"eos_token": "<|im_end|>", "chat_template": GEMMA})
    cases.append(("chat template", "--chat, HF Gemma template", gen(d, "--chat"), 2,
                  "of the Gemma family"))
    return cases


GNU_TIME = "/usr/bin/time"


def run(binary, argv, timeout):
    """Runs one case; returns (exit code, stderr, CPU seconds, peak RSS in MB). A process still
    running after timeout is killed (a hang fails its case instead of the whole suite). The RSS
    comes from GNU time where it is installed: a child forked from Python keeps Python's own
    ~17 MB as its high-water mark across exec, so wait4's figure is only an upper bound."""
    err_path = tempfile.mktemp()
    rss_path = err_path + ".rss"
    cmd = [binary] + argv
    if os.access(GNU_TIME, os.X_OK):
        cmd = [GNU_TIME, "-f", "%M", "-o", rss_path] + cmd
    t0 = time.monotonic()
    with open(err_path, "wb") as err, open(os.devnull, "wb") as null:
        pid = os.fork()
        if pid == 0:
            os.dup2(null.fileno(), 1)
            os.dup2(err.fileno(), 2)
            os.execv(cmd[0], cmd)
        while True:
            wpid, status, ru = os.wait4(pid, os.WNOHANG)
            if wpid:
                break
            if time.monotonic() - t0 > timeout:
                os.kill(pid, signal.SIGKILL)
                _, status, ru = os.wait4(pid, 0)
                break
            time.sleep(0.002)
    dt = ru.ru_utime + ru.ru_stime  # GNU time's and, as it reaped it, tessera's
    with open(err_path, "rb") as f:
        text = f.read().decode(errors="replace")
    os.unlink(err_path)
    code = os.waitstatus_to_exitcode(status)
    rss = ru.ru_maxrss / 1024.0
    if os.path.exists(rss_path):
        with open(rss_path) as f:
            lines = f.read().split()
        os.unlink(rss_path)
        if lines and lines[-1].isdigit():
            rss = int(lines[-1]) / 1024.0
    return code, text, dt, rss


def main():
    binary = os.path.abspath(sys.argv[1])
    work = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="tsr_malformed_")
    os.makedirs(work, exist_ok=True)
    cases = build_cases(work)
    env_limit = float(os.environ.get("TSR_MALFORMED_TIME_LIMIT", TIME_LIMIT_S))
    fails = 0
    base = run(binary, ["--version"], timeout=10)[3]
    print("the binary's own RSS (tessera --version): %.1f MB; each case may add %d MB" % (
        base, RSS_LIMIT_MB))
    print("%-16s %-58s %4s %7s %7s  %s" % ("class", "case", "exit", "CPU s", "RSS MB", "result"))
    for cls, name, argv, want_code, want_text in cases:
        code, err, dt, rss = run(binary, argv, timeout=10)
        problems = []
        if code != want_code:
            problems.append("exit %d, want %d" % (code, want_code))
        if want_text and want_text not in err:
            problems.append("stderr lacks %r" % want_text)
        # The bar is on errors; a case that runs the model (a baseline, a header at its bound)
        # gets more room on a loaded machine.
        limit = env_limit if want_code != 0 else 5 * env_limit
        if dt > limit:
            problems.append("%.2f s of CPU > %.1f s" % (dt, limit))
        if rss - base > RSS_LIMIT_MB:
            problems.append("RSS %.0f MB: %.0f MB over the binary's own %.0f MB, more than %d MB" % (
                rss, rss - base, base, RSS_LIMIT_MB))
        print("%-16s %-58s %4d %7.3f %7.1f  %s" % (cls, name[:58], code, dt, rss,
                                                   "ok" if not problems else "FAIL"))
        if problems:
            fails += 1
            print("    " + "; ".join(problems))
            print("    stderr: " + err.strip().replace("\n", "\n            ")[:2000])
    print("%d cases, %d failed" % (len(cases), fails))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
