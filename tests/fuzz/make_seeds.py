#!/usr/bin/env python3
"""Writes the seed corpora for fuzz_gguf and fuzz_safetensors: small valid files that reach every
branch of the parsers (all metadata types, nested arrays, every tensor type, alignments, GGUF v2
and v3; safetensors with metadata, scalars, empty tensors, every supported dtype). Deterministic;
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
TTYPES = {0: (1, 4), 1: (1, 2), 30: (1, 2), 8: (32, 34), 2: (32, 18), 3: (32, 20)}


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
    size = {"F32": 4, "F16": 2, "BF16": 2}
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


if __name__ == "__main__":
    main()
