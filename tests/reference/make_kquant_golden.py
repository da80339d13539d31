#!/usr/bin/env python3
"""Golden for the k-quant and Q5_0/Q5_1 decoders (tests/unit/test_kquants.c): seeded random Q4_K,
Q5_K, Q6_K, Q5_0 and Q5_1 blocks, dequantized by gguf-py (gguf.quants, numpy), an implementation
independent of ours.

Every byte of every block is random (all scale, min and quant codes occur) except the f16 scale
fields (Q4_K/Q5_K d and dmin, Q6_K d, Q5_0 d, Q5_1 d and m), which are set to finite values:
magnitudes log-uniform in [2^-18, 2^-2] (f16 subnormals included), an eighth of them negative (half
of Q5_1's m, a block's minimum, so that a fair share of its weights are negative), one block with
d = 0 and one with dmin (m) = 0, so the results are finite. 8 rows per type, of 512
weights (two super-blocks) for the k-quants, of 576 (18 blocks, SmolLM2's width) for Q5_0/Q5_1.
The k-quant sets come first, from the same random stream as before Q5_0/Q5_1 were added, so their
bytes did not change.

Writes kquant_golden.bin, little endian:
    "TKQG", u32 version (1), u32 n_sets, then per set:
    u32 ggml type, u32 rows, u32 cols, u32 nbytes, nbytes of blocks (rows of cols weights),
    f32[rows * cols] gguf-py's dequantized values.

    /usr/bin/python3 tests/reference/make_kquant_golden.py   # needs numpy and gguf (PyPI)
    (or /opt/oracle/bin/python, a venv with both)
"""
import os
import struct

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "kquant_golden.bin")
ROWS, SEED = 8, 20240611
COLS = {T.Q4_K: 512, T.Q5_K: 512, T.Q6_K: 512, T.Q5_0: 576, T.Q5_1: 576}
# byte offsets of the f16 scale fields in a block
F16_FIELDS = {T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,), T.Q5_0: (0,), T.Q5_1: (0, 2)}


def f16_scales(rng, n, neg_eighths=1):
    mag = np.exp2(rng.uniform(-18.0, -2.0, n))
    sign = np.where(rng.integers(0, 8, n) < neg_eighths, -1.0, 1.0)
    return (sign * mag).astype(np.float16)


def make_set(rng, qtype):
    qk, bs = GGML_QUANT_SIZES[qtype]
    cols = COLS[qtype]
    nb = ROWS * cols // qk
    blocks = rng.integers(0, 256, (nb, bs), dtype=np.uint8)
    for k, off in enumerate(F16_FIELDS[qtype]):
        v = f16_scales(rng, nb, 4 if (qtype, k) == (T.Q5_1, 1) else 1)
        v[1 + k] = 0.0  # block 1: d = 0; block 2: dmin = 0
        blocks[:, off:off + 2] = v.view(np.uint8).reshape(nb, 2)
    raw = blocks.reshape(ROWS, cols // qk * bs)
    want = dequantize(raw, qtype)
    assert want.dtype == np.float32 and want.shape == (ROWS, cols)
    assert np.isfinite(want).all()
    return raw, want


def main():
    rng = np.random.default_rng(SEED)
    sets = [(q,) + make_set(rng, q) for q in (T.Q4_K, T.Q5_K, T.Q6_K, T.Q5_0, T.Q5_1)]
    out = b"TKQG" + struct.pack("<II", 1, len(sets))
    for q, raw, want in sets:
        data = raw.tobytes()
        out += struct.pack("<IIII", int(q), ROWS, COLS[q], len(data)) + data
        out += want.astype("<f4").tobytes()
    with open(OUT, "wb") as f:
        f.write(out)
    print(f"wrote {OUT} ({len(out)} bytes)")


if __name__ == "__main__":
    main()
