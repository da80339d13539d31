#!/usr/bin/env bash
# `tessera generate` end to end: the default model answers a chat prompt, bad flags and bad model
# files get clear errors and the documented exit codes.
# Usage: test_generate.sh path/to/tessera repo_root
set -uo pipefail
bin=$1 root=$2
model="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
fails=0 passes=0
check() { # name, condition result
  if [ "$2" = 0 ]; then passes=$((passes + 1)); else echo "FAIL: $1"; fails=$((fails + 1)); fi
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

out=$("$bin" generate --model "$model" --chat --prompt "What is the capital of France? Answer in one sentence." \
      --max-tokens 32 2>"$tmp/err")
check "chat answer mentions Paris (got: $out)" "$(grep -q Paris <<<"$out"; echo $?)"
check "speeds on stderr" "$(grep -q 'decode .* tok/s' "$tmp/err"; echo $?)"
TESSERA_LOG=debug "$bin" generate --model "$model" --prompt hi --max-tokens 1 >/dev/null 2>"$tmp/err"
check "weight-loading progress, layer by layer at debug, as timed log lines" "$(grep -Eq \
  '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}\.[0-9]{3}Z generate\[[0-9]+\] debug: loading weights: [0-9.]+ GB, layer 30 of 30 \(100%\)$' \
  "$tmp/err"; echo $?)"

a=$("$bin" generate --model "$model" --prompt "Once upon a time" --max-tokens 24 \
    --temperature 0.9 --top-p 0.9 --seed 7 --ignore-eos 2>/dev/null)
b=$("$bin" generate --model "$model" --prompt "Once upon a time" --max-tokens 24 \
    --temperature 0.9 --top-p 0.9 --seed 7 --ignore-eos 2>/dev/null)
check "same seed, same text" "$([ "$a" = "$b" ] && [ -n "$a" ]; echo $?)"

"$bin" generate --model "$model" --prompt hi --temperature -1 >/dev/null 2>"$tmp/err"
check "negative temperature exits 2" "$([ $? = 2 ] && grep -q temperature "$tmp/err"; echo $?)"
"$bin" generate --model "$model" >/dev/null 2>"$tmp/err"
check "missing prompt exits 2" "$([ $? = 2 ]; echo $?)"
head -c 1000 "$model" >"$tmp/cut.gguf"
"$bin" generate --model "$tmp/cut.gguf" --prompt hi >/dev/null 2>"$tmp/err"
check "truncated model: exit 1 naming the file" "$([ $? = 1 ] && grep -q cut.gguf "$tmp/err"; echo $?)"
"$bin" generate --model synthetic:tiny --prompt-ids 1,2,3 --max-tokens 4 >"$tmp/out" 2>&1
check "synthetic model prints ids" "$([ $? = 0 ] && grep -Eq '^[0-9]+(,[0-9]+){3}$' "$tmp/out"; echo $?)"
"$bin" generate --model synthetic:tiny --prompt-ids 1,2,999 >/dev/null 2>"$tmp/err"
check "token id outside vocab exits 2" "$([ $? = 2 ] && grep -q vocabulary "$tmp/err"; echo $?)"

# the sampling flags are tessera client's (tools/flags.c): a +100 bias forces its token, the
# penalties reach the one validation, llama.cpp's --repeat-penalty still names the same field
"$bin" generate --model synthetic:tiny --prompt-ids 1,2,3 --max-tokens 4 --ignore-eos \
  --logit-bias 7:100 --presence-penalty 0.5 --frequency-penalty 0.5 --repetition-penalty 1.1 \
  --seed 3 --temperature 0.7 >"$tmp/out" 2>/dev/null
check "--logit-bias 7:100 gives 7,7,7,7 ($(tail -n 1 "$tmp/out"))" \
  "$([ $? = 0 ] && [ "$(tail -n 1 "$tmp/out")" = 7,7,7,7 ]; echo $?)"
"$bin" generate --model synthetic:tiny --prompt-ids 1,2,3 --presence-penalty 3 >/dev/null 2>"$tmp/err"
check "--presence-penalty 3: exit 2 naming presence_penalty" \
  "$([ $? = 2 ] && grep -q presence_penalty "$tmp/err"; echo $?)"
"$bin" generate --model synthetic:tiny --prompt-ids 1,2,3 --repeat-penalty 0 >/dev/null 2>"$tmp/err"
check "--repeat-penalty 0: exit 2 naming repetition_penalty" \
  "$([ $? = 2 ] && grep -q repetition_penalty "$tmp/err"; echo $?)"
"$bin" generate --model synthetic:tiny --prompt-ids 1,2,3 --logit-bias 5 >/dev/null 2>"$tmp/err"
check "--logit-bias 5: exit 2 naming the flag" "$([ $? = 2 ] && grep -q -- --logit-bias "$tmp/err"; echo $?)"
# one set of definitions: every option serve passes to a worker or a coordinator is in serve's
# help, and generate and client list the same sampling and prompt flags
serve_help=$("$bin" serve --help)
for cmd in worker coordinator; do
  for f in $("$bin" $cmd --help | grep -oE -- '--[a-z][a-z-]+' | sort -u); do
    case $f in --etcd|--id|--prefix|--ttl|--group*|--metrics-port|--help) continue ;; esac
    grep -q -- "$f\b" <<<"$serve_help" || check "serve --help lists $cmd's $f" 1
  done
done
flags() { "$bin" "$1" --help >"$tmp/help"; grep -oE -- '--(temperature|top-[kp]|min-p|[a-z]+-penalty|seed|max-tokens|ignore-eos|logit-bias|prompt|prompt-ids|chat|system|show-ids)\b' "$tmp/help" | sort -u; }
check "generate and client share their sampling and prompt flags" \
  "$([ "$(flags generate)" = "$(flags client)" ] && [ "$(flags generate | wc -l)" -ge 16 ]; echo $?)"

one=$("$bin" generate --model "$model" --prompt "A mosaic is" --max-tokens 16 --ignore-eos \
      --show-ids 2>/dev/null | tail -n 1)
sharded=$("$bin" generate --model "$model" --prompt "A mosaic is" --max-tokens 16 --ignore-eos \
          --show-ids --tp 3 --pp 2 2>"$tmp/err" | tail -n 1)
check "tp 3 x pp 2 through mpirun gives the single-rank tokens ($one / $sharded)" \
  "$([ -n "$one" ] && [ "$one" = "$sharded" ]; echo $?)"
"$bin" generate --model "$model" --prompt hi --tp 2 >/dev/null 2>"$tmp/err"
check "tp 2 on 9 heads: exit 2 naming the heads" "$([ $? = 2 ] && grep -q heads "$tmp/err"; echo $?)"
# bench --batches with contexts longer than a step's tokens (2,048 here) fills them in chunks
# (it once wrote past its step arrays: ASan's CI run of this script would show it)
"$bin" bench --model synthetic:tiny-4k --batches 1,2 --context 3000 --steps 2 --prefill-tokens 16 \
  >"$tmp/out" 2>"$tmp/err"
check "bench --batches at a 3,000-token context: exit 0, two rows" \
  "$([ $? = 0 ] && [ "$(grep -c '^|  *[12] |  *3000 |' "$tmp/out")" = 2 ]; echo $?)"
# expert parallelism (--ep): the experts of mixtral-tiny over 2 ranks give the single-rank tokens;
# a dense model or an ep that does not divide the experts is one clear error before mpirun
moe=$("$bin" generate --model synthetic:mixtral-tiny --prompt-ids 5,6,7 --max-tokens 12 \
      --ignore-eos --show-ids 2>/dev/null | tail -n 1)
moe_ep=$("$bin" generate --model synthetic:mixtral-tiny --prompt-ids 5,6,7 --max-tokens 12 \
         --ignore-eos --show-ids --ep 2 2>"$tmp/err" | tail -n 1)
check "mixtral-tiny at ep 2 gives the single-rank tokens ($moe / $moe_ep)" \
  "$([ -n "$moe" ] && [ "$moe" = "$moe_ep" ]; echo $?)"
"$bin" generate --model synthetic:tiny --prompt-ids 1,2 --ep 2 >/dev/null 2>"$tmp/err"
check "ep 2 on a dense model: exit 2 saying it is dense" "$([ $? = 2 ] && grep -q dense "$tmp/err"; echo $?)"
"$bin" generate --model synthetic:mixtral-tiny --prompt-ids 1,2 --ep 3 >/dev/null 2>"$tmp/err"
check "ep 3 on 8 experts: exit 2 naming the experts" "$([ $? = 2 ] && grep -q "8 experts" "$tmp/err"; echo $?)"
"$bin" generate --model synthetic:mixtral-tiny --prompt-ids 1,2 --tp 2 --ep 3 >/dev/null 2>"$tmp/err"
check "ep 3 with tp 2: exit 2 (not a multiple of tp)" "$([ $? = 2 ] && grep -q "multiple of tp" "$tmp/err"; echo $?)"

echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
