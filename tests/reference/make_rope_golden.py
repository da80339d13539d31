"""Reference RoPE inverse frequencies with Llama 3 scaling, as transformers computes them
(modeling_rope_utils._compute_llama3_parameters), for tests/unit/test_config.c.

    python3 tests/reference/make_rope_golden.py > tests/reference/rope_llama3_golden.txt
"""
import math

base, dim = 500000.0, 128
factor, low, high, orig = 8.0, 1.0, 4.0, 8192
inv = [base ** (-(2 * i) / dim) for i in range(dim // 2)]
low_wl, high_wl = orig / low, orig / high
out = []
for f in inv:
    wl = 2 * math.pi / f
    if wl < high_wl:
        out.append(f)
    elif wl > low_wl:
        out.append(f / factor)
    else:
        smooth = (orig / wl - low) / (high - low)
        out.append((1 - smooth) * f / factor + smooth * f)
print(" ".join(f"{x:.9e}" for x in out))
