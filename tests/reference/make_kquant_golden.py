#!/usr/bin/env python3
"""Golden for the k-quant decoders (tests/unit/test_kquants.c): seeded random Q4_K, Q5_K and Q6_K
blocks, dequantized by gguf-py (gguf.quants, numpy), an implementation independent of ours.

Every byte of every block is random (all scale, min and quant codes occur) except the f16 scale
fields (Q4_K/Q5_K d and dmin, Q6_K d), which are set to finite values: magnitudes log-uniform in
[2^-18, 2^-2] (f16 subnormals included), an eighth of them negative, one block with d = 0 and one
with dmin = 0, so the results are finite. 8 rows of 512 weights (two super-blocks) per type.

Writes kquant_golden.bin, little endian:
    "TKQG", u32 version (1), u32 n_sets, then per set:
    u32 ggml type, u32 rows, u32 cols, u32 nbytes, nbytes of blocks (rows of cols weights),
    f32[rows * cols] gguf-py's dequantized values.

    /usr/bin/python3 tests/reference/make_kquant_golden.py   # needs numpy and gguf (PyPI)
"""
import os
import struct

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "kquant_golden.bin")
ROWS, COLS, SEED = 8, 512, 20240611
# byte offsets of the f16 scale fields in a block
F16_FIELDS = {T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}


def f16_scales(rng, n):
    mag = np.exp2(rng.uniform(-18.0, -2.0, n))
    sign = np.where(rng.integers(0, 8, n) == 0, -1.0, 1.0)
    return (sign * mag).astype(np.float16)


def make_set(rng, qtype):
    qk, bs = GGML_QUANT_SIZES[qtype]
    nb = ROWS * COLS // qk
    blocks = rng.integers(0, 256, (nb, bs), dtype=np.uint8)
    for k, off in enumerate(F16_FIELDS[qtype]):
        v = f16_scales(rng, nb)
        v[1 + k] = 0.0  # block 1: d = 0; block 2: dmin = 0
        blocks[:, off:off + 2] = v.view(np.uint8).reshape(nb, 2)
    raw = blocks.reshape(ROWS, COLS // qk * bs)
    want = dequantize(raw, qtype)
    assert want.dtype == np.float32 and want.shape == (ROWS, COLS)
    assert np.isfinite(want).all()
    return raw, want


def main():
    rng = np.random.default_rng(SEED)
    sets = [(q,) + make_set(rng, q) for q in (T.Q4_K, T.Q5_K, T.Q6_K)]
    out = b"TKQG" + struct.pack("<II", 1, len(sets))
    for q, raw, want in sets:
        data = raw.tobytes()
        out += struct.pack("<IIII", int(q), ROWS, COLS, len(data)) + data
        out += want.astype("<f4").tobytes()
    with open(OUT, "wb") as f:
        f.write(out)
    print(f"wrote {OUT} ({len(out)} bytes)")


if __name__ == "__main__":
    main()
