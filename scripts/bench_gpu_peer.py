#!/usr/bin/env python3
"""The GPU benchmark's peer: PyTorch + transformers on the shapes `tessera bench --batches` runs.

A LlamaForCausalLM built from a config (llama3-8b's shape, random weights, bf16, SDPA attention;
no download), on one GPU:
- decode tok/s at each batch size and each --context (a comma-separated list): `generate` with
  greedy decoding from a random prompt of that many tokens per sequence; the decode time per step is the difference between generating 1 + steps
  tokens and 1 token (so the prompt's prefill cancels), over steps;
- prefill tok/s of one prompt of each --prefill-tokens (a list; a forward pass, logits of the last
  token only);
- the device-to-device copy bandwidth and an 8192^3 bf16 matmul rate, measured the same way as
  tessera's (CUDA events, median of 10 after 3 warm-ups).
Prints one JSON line per measurement, then a table.
"""
import argparse
import json
import statistics
import time

import torch


def median_ms(fn, warm=3, runs=10):
    for _ in range(warm):
        fn()
    times = []
    for _ in range(runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def ceilings():
    n = 1 << 30  # bytes
    src = torch.randint(-2**15, 2**15, (n // 2,), dtype=torch.int16, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src))
    a = torch.rand(8192, 8192, device="cuda", dtype=torch.bfloat16) * 2 - 1
    b = torch.rand(8192, 8192, device="cuda", dtype=torch.bfloat16) * 2 - 1
    mm_ms = median_ms(lambda: a @ b)
    del src, dst, a, b
    return 2 * n / (copy_ms * 1e-3), 2 * 8192**3 / (mm_ms * 1e-3)


SHAPES = {
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8),
    "llama3-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                       num_attention_heads=64, num_key_value_heads=8),
}


def build(shape, positions):
    from transformers import LlamaConfig, LlamaForCausalLM
    # RoPE's base and scaling do not change the cost; they are left at the library's defaults,
    # whose names moved between transformers versions.
    cfg = LlamaConfig(vocab_size=128256, max_position_embeddings=max(8192, positions), rms_norm_eps=1e-5,
                      tie_word_embeddings=False, **SHAPES[shape])
    try:
        cfg._attn_implementation = "sdpa"
    except Exception:  # set differently in some versions; SDPA is the default there
        pass
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    model.eval()
    gc = model.generation_config
    gc.eos_token_id = None
    gc.pad_token_id = 0
    gc.do_sample = False
    return model


@torch.inference_mode()
def decode_step_s(model, batch, context, steps, vocab):
    g = torch.Generator(device="cuda").manual_seed(batch)
    ids = torch.randint(0, vocab, (batch, context), device="cuda", generator=g)
    mask = torch.ones_like(ids)

    def gen(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                       do_sample=False)
        torch.cuda.synchronize()
        return time.perf_counter() - t

    gen(2)  # warm-up
    t1 = statistics.median(gen(1) for _ in range(3))
    tn = statistics.median(gen(1 + steps) for _ in range(3))
    return (tn - t1) / steps


@torch.inference_mode()
def prefill_s(model, tokens, vocab, repeats):
    ids = torch.randint(0, vocab, (1, tokens), device="cuda")
    for _ in range(2):
        model(input_ids=ids, logits_to_keep=1, use_cache=False)
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        model(input_ids=ids, logits_to_keep=1, use_cache=False)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    ap.add_argument("--batches", default="1,8,64,256")
    ap.add_argument("--context", default="512")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--prefill-tokens", default="2048")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    import transformers
    copy_bps, mm_flops = ceilings()
    print(json.dumps({"engine": "torch", "torch": torch.__version__,
                      "transformers": transformers.__version__,
                      "device": torch.cuda.get_device_name(), "copy_TBps": copy_bps / 1e12,
                      "bf16_mm_TFLOPs": mm_flops / 1e12}), flush=True)
    contexts = [int(x) for x in a.context.split(",")]
    prefills = [int(x) for x in a.prefill_tokens.split(",")]
    model = build(a.shape, max(contexts + prefills) + a.steps + 8)
    vocab = model.config.vocab_size
    rows, prows = [], []
    for c in contexts:
        for b in [int(x) for x in a.batches.split(",")]:
            s = decode_step_s(model, b, c, a.steps, vocab)
            rows.append((b, c, s))
            print(json.dumps({"engine": "torch", "shape": a.shape, "batch": b, "context": c,
                              "step_ms": s * 1e3, "tok_s": b / s}), flush=True)
    for n in prefills:
        p = prefill_s(model, n, vocab, a.repeats)
        prows.append((n, p))
        print(json.dumps({"engine": "torch", "shape": a.shape, "prefill_tokens": n,
                          "prefill_ms": p * 1e3, "prefill_tok_s": n / p}), flush=True)
    print(f"\ntorch {torch.__version__} + transformers {transformers.__version__}, "
          f"{torch.cuda.get_device_name()}, {a.shape} bf16 (random weights), SDPA")
    print("| batch | context | step ms | tok/s |")
    print("| ----: | ------: | ------: | ----: |")
    for b, c, s in rows:
        print(f"| {b:5d} | {c:7d} | {s * 1e3:7.3f} | {b / s:5.0f} |")
    for n, p in prows:
        print(f"\nprefill {n} tokens: {p * 1e3:.1f} ms, {n / p:.0f} tok/s")
    print(f"device-to-device copy {copy_bps / 1e12:.2f} TB/s, bf16 8192^3 matmul "
          f"{mm_flops / 1e12:.0f} TFLOP/s")


if __name__ == "__main__":
    main()
