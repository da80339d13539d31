#!/usr/bin/env bash
# --kv-cache-dtype end to end on the CPU with the default model: bf16 and fp8 KV caches against
# the f32 one (the CPU's default, auto), teacher-forced as `tessera bench --perplexity FILE --text`
# scores the first 6,000 bytes of GPL-3's text (2 chunks of 512 tokens, 510 positions):
#   bf16: argmax agreement >= 0.99 and perplexity within 0.1% (measured: 0.998, one position of
#     510, and 1e-7 relative);
#   fp8 (E4M3, a scale per token and KV head): agreement >= 0.93 and perplexity within 3%
#     (measured: 0.951 and +1.9%; over the first 40,000 bytes, 3,570 positions, 0.952 and +0.97%:
#     E4M3's 3-bit mantissa on this small model's 3 KV heads of 64, the bar FP8 weights meet too);
# each not the same bits as f32 (the cache was rounded); greedy generation on two chat prompts
# gives the f32 cache's first 16 tokens with either; auto is f32 on the CPU (the JSON says so; the
# same tokens); and the flag's errors: a value outside auto, f32, bf16, fp8 is a usage error (exit
# 2) naming the flag and the choices, in generate, bench and serve. About 30 s on 2 cores.
# Usage: test_kv_cache_dtype.sh path/to/tessera repo_root
set -uo pipefail
. "$(dirname "$0")/gpl3_ppl.sh" "$1" "$2" 6000
cmp_py() { # python expression over a, b -> exit status 0 when true
  $py -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if ($1) else 1)" "$2" "$3"
  echo $?
}

ppl "$tmp/ref" --save-ids "$tmp/ref.ids"
rc=$?
check "the default (auto) cache runs (rc $rc: $(cat "$tmp/ref.err"))" "$rc"
[ "$rc" = 0 ] || exit 1
check "auto is f32 on the CPU ($(field "$tmp/ref" kv_cache_dtype))" \
  "$([ "$(field "$tmp/ref" kv_cache_dtype)" = F32 ]; echo $?)"
# name, type (its JSON name), agreement bound, relative perplexity bound
for spec in "bf16 BF16 0.99 1e-3" "fp8 F8_E4M3 0.93 3e-2"; do
  read -r t json min_agree max_rel <<<"$spec"
  ppl "$tmp/$t" --kv-cache-dtype "$t" --ref-ids "$tmp/ref.ids"
  rc=$?
  check "--kv-cache-dtype $t runs (rc $rc: $(cat "$tmp/$t.err"))" "$rc"
  [ "$rc" = 0 ] || continue
  agree=$(field "$tmp/$t" agree)
  rel=$($py -c 'import sys; print(float(sys.argv[1]) / float(sys.argv[2]) - 1)' \
    "$(field "$tmp/$t" ppl)" "$(field "$tmp/ref" ppl)")
  echo "$t KV cache against f32: agreement $agree over $(field "$tmp/$t" agree_positions) positions, perplexity $(field "$tmp/$t" ppl) vs $(field "$tmp/ref" ppl) (relative $rel)"
  check "$t: the JSON names the cache ($(field "$tmp/$t" kv_cache_dtype))" \
    "$([ "$(field "$tmp/$t" kv_cache_dtype)" = "$json" ]; echo $?)"
  check "$t: argmax agreement $agree >= $min_agree" "$(cmp_py "a >= $min_agree" "$agree" 0)"
  check "$t: perplexity within $max_rel of f32's (relative $rel)" \
    "$(cmp_py "abs(a) <= $max_rel" "$rel" 0)"
  check "$t: not f32's bits (nll $(field "$tmp/$t" nll) vs $(field "$tmp/ref" nll))" \
    "$([ "$(field "$tmp/$t" nll)" != "$(field "$tmp/ref" nll)" ]; echo $?)"
done

# greedy generation: the first 16 tokens as the f32 cache gives them (auto's too, on the CPU)
for prompt in "What is the capital of France? Answer in one sentence." "Write a haiku about the sea."; do
  for t in auto f32 bf16 fp8; do
    "$bin" generate --model "$model" --threads 1 --chat --max-tokens 16 --ignore-eos --show-ids \
      --kv-cache-dtype "$t" --prompt "$prompt" 2>"$tmp/gen.err" | tail -n 1 >"$tmp/gen.$t"
  done
  for t in bf16 fp8; do
    check "greedy, $t cache: f32's 16 tokens for '$prompt' ($(cat "$tmp/gen.$t") vs $(cat "$tmp/gen.f32"))" \
      "$([ -s "$tmp/gen.f32" ] && cmp -s "$tmp/gen.f32" "$tmp/gen.$t"; echo $?)"
  done
  check "greedy, auto: f32's tokens" "$(cmp -s "$tmp/gen.f32" "$tmp/gen.auto"; echo $?)"
done

# the flag's errors: exit 2, naming the flag and the choices
for cmd in "generate --prompt hi" "bench --perplexity $text --text" "serve"; do
  for bad in fp8e5 f16 BF16x; do
    # shellcheck disable=SC2086
    "$bin" $cmd --model "$model" --kv-cache-dtype "$bad" >/dev/null 2>"$tmp/err"
    rc=$?
    check "${cmd%% *} --kv-cache-dtype $bad: exit 2 naming the choices (rc $rc: $(head -c 200 "$tmp/err"))" \
      "$([ "$rc" = 2 ] && grep -q -- "--kv-cache-dtype: '$bad' is not one of auto, f32, bf16, fp8" "$tmp/err"; echo $?)"
  done
done

echo "kv cache dtype: $passes passed, $fails failed"
[ "$fails" = 0 ]
