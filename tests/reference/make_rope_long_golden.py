"""Reference RoPE rotations far past the CPU backend's table (positions up to 500,000; the table
ends at 32,768), with Llama 3 and linear scaling, in float64, for tests/unit/test_rope_long.c.

    python3 tests/reference/make_rope_long_golden.py > tests/reference/rope_long_golden.json

Inverse frequencies are computed in float64 as transformers defines them
(modeling_rope_utils: _compute_llama3_parameters, _compute_linear_scaling_rope_parameters) and then
rounded to float32, the type every implementation (transformers' inv_freq buffer included) keeps
them in: the test feeds these float32 values to the op, so that the rotation itself (angle
pos * f, cos, sin, the pairs) is what is compared, and checks separately that tessera's own
frequencies are these to float32 rounding. Each rotation is then done in float64 on a float32
input vector (seeded, no numpy: only the standard library).
"""
import json
import math
import struct


def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def llama3(base, dim, factor, low, high, orig):
    out = []
    for i in range(dim // 2):
        f = base ** (-(2 * i) / dim)
        wl = 2 * math.pi / f
        if wl < orig / high:
            out.append(f)
        elif wl > orig / low:
            out.append(f / factor)
        else:
            smooth = (orig / wl - low) / (high - low)
            out.append((1 - smooth) * f / factor + smooth * f)
    return out


def linear(base, dim, factor):
    return [base ** (-(2 * i) / dim) / factor for i in range(dim // 2)]


def rotate(x, freqs, pos, neox):
    half = len(freqs)
    y = list(x)
    for i, f in enumerate(freqs):
        i0, i1 = (i, i + half) if neox else (2 * i, 2 * i + 1)
        a = pos * f
        c, s = math.cos(a), math.sin(a)
        y[i0] = x[i0] * c - x[i1] * s
        y[i1] = x[i0] * s + x[i1] * c
    return y


def vector(n, seed):
    out = []
    for _ in range(n):
        seed = (seed * 6364136223846793005 + 1442695040888963407) % 2**64
        out.append(f32(((seed >> 11) / 2**53) * 2 - 1))
    return out


POSITIONS = [0, 1, 8191, 8192, 32767, 32768, 32769, 65535, 65536, 100000, 131071, 500000]
CASES = [
    # name, config.json fields, exact frequencies, head_dim, neox
    ("llama3", {"rope_theta": 500000.0, "head_dim": 128,
                "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 8192}},
     llama3(500000.0, 128, 8.0, 1.0, 4.0, 8192), 128, 1),
    ("linear", {"rope_theta": 10000.0, "head_dim": 64,
                "rope_scaling": {"type": "linear", "factor": 4.0}},
     linear(10000.0, 64, 4.0), 64, 0),
]

out = {"meta": {"script": "tests/reference/make_rope_long_golden.py",
                "oracle": "float64 rotations with float32-rounded transformers frequencies"},
       "positions": POSITIONS, "cases": []}
for k, (name, cfg, exact, hd, neox) in enumerate(CASES):
    freqs = [f32(f) for f in exact]
    x = vector(hd, 1234 + k)
    out["cases"].append({
        "name": name, "config": cfg, "head_dim": hd, "neox": neox,
        "inv_freq_exact": [float(repr(f)) for f in exact],
        "inv_freq_f32": freqs,
        "x": x,
        "rotated": [rotate(x, freqs, p, neox) for p in POSITIONS],
    })
print(json.dumps(out, indent=None, separators=(",", ":")))
