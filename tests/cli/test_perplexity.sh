#!/usr/bin/env bash
# `tessera bench --perplexity` on tiny synthetic models: the JSON line is consistent (ppl = exp(nll),
# tokens_scored = chunks * (C - C/2 - 1)), each chunk is scored from an empty cache (two chunks'
# NLL is the mean of each alone), the step size does not change the result, and bad inputs are
# clear errors with the documented exit codes.
# Usage: test_perplexity.sh path/to/tessera repo_root
set -uo pipefail
bin=$1
fails=0 passes=0
check() { # name, condition result
  if [ "$2" = 0 ]; then passes=$((passes + 1)); else echo "FAIL: $1"; fails=$((fails + 1)); fi
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
py=/usr/bin/python3

# deterministic ids below tiny's vocabulary of 256, 300 of them, two to a line
$py -c 'import random; random.seed(5); ids = [random.randrange(256) for _ in range(300)]
print("\n".join(f"{a} {b}" for a, b in zip(ids[::2], ids[1::2])))' >"$tmp/ids"
ppl() { # out_file ids_file [flags...]: runs bench --perplexity, JSON to out_file; rc
  local out=$1 ids=$2
  shift 2
  "$bin" bench --model synthetic:tiny --perplexity "$ids" "$@" >"$out" 2>"$out.err"
}
field() { $py -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

ppl "$tmp/a" "$tmp/ids" --ctx 64
rc=$?
check "ctx 64 runs (rc $rc: $(cat "$tmp/a.err"))" "$rc"
check "one JSON line with the fields and ppl = exp(nll), 4 chunks of 31 scored ($(cat "$tmp/a"))" \
  "$($py - "$tmp/a" <<'EOF'
import json, math, sys
lines = open(sys.argv[1]).read().splitlines()
r = json.loads(lines[0])
ok = (len(lines) == 1 and r["ctx"] == 64 and r["chunks"] == 300 // 64
      and r["tokens_scored"] == r["chunks"] * (64 - 32 - 1) and math.isfinite(r["nll"])
      and r["nll"] > 0 and abs(r["ppl"] - math.exp(r["nll"])) <= 1e-6 * r["ppl"])
print(0 if ok else 1)
EOF
)"

# chunks are independent: the NLL of chunks 1 and 2 together is the mean of each alone
tr -s ' ' '\n' <"$tmp/ids" >"$tmp/all"
head -n 64 "$tmp/all" >"$tmp/c1"
sed -n 65,128p "$tmp/all" >"$tmp/c2"
cat "$tmp/c1" "$tmp/c2" >"$tmp/c12"
ppl "$tmp/r1" "$tmp/c1" --ctx 64 && ppl "$tmp/r2" "$tmp/c2" --ctx 64 &&
  ppl "$tmp/r12" "$tmp/c12" --ctx 64
check "chunks alone run" "$?"
check "two chunks' NLL = the mean of each chunk's alone (empty cache per chunk)" "$($py - \
  "$(field "$tmp/r1" nll)" "$(field "$tmp/r2" nll)" "$(field "$tmp/r12" nll)" <<'EOF'
import sys
a, b, ab = map(float, sys.argv[1:])
print(0 if abs((a + b) / 2 - ab) <= 1e-6 * ab else 1)
EOF
)"

# the step size: one step per chunk, or steps of 7 tokens, give the same numbers
ppl "$tmp/s1" "$tmp/ids" --ctx 64 --step-tokens 64 && ppl "$tmp/s7" "$tmp/ids" --ctx 64 --step-tokens 7
check "--step-tokens 64 and 7 agree with the default ($(field "$tmp/s7" nll))" \
  "$([ "$(field "$tmp/s1" nll)" = "$(field "$tmp/a" nll)" ] &&
     [ "$(field "$tmp/s7" nll)" = "$(field "$tmp/a" nll)" ]; echo $?)"

# errors
ppl "$tmp/e" "$tmp/ids"
check "300 tokens under the default --ctx 512: exit 2 naming both" \
  "$([ $? = 2 ] && grep -q "holds 300 tokens, fewer than --ctx 512" "$tmp/e.err"; echo $?)"
ppl "$tmp/e" "$tmp/ids" --ctx 1024
check "--ctx past tiny's context of 512: exit 2" \
  "$([ $? = 2 ] && grep -q "exceeds the model's context length 512" "$tmp/e.err"; echo $?)"
{ cat "$tmp/ids"; echo 256; } >"$tmp/bad_id"
ppl "$tmp/e" "$tmp/bad_id" --ctx 64
check "id 256 (vocabulary 256): exit 2 naming token 301" \
  "$([ $? = 2 ] && grep -q "token 301 is 256, outside the vocabulary (0..255)" "$tmp/e.err"; echo $?)"
{ echo 1 2 -3; } >"$tmp/neg"
ppl "$tmp/e" "$tmp/neg" --ctx 4
check "a negative id: exit 2" "$([ $? = 2 ] && grep -q "token 3 is -3" "$tmp/e.err"; echo $?)"
{ echo 1 2 x3 4; } >"$tmp/junk"
ppl "$tmp/e" "$tmp/junk" --ctx 4
check "a word that is not an id: exit 1 naming it" \
  "$([ $? = 1 ] && grep -q "token 3 is 'x3', not an id" "$tmp/e.err"; echo $?)"
ppl "$tmp/e" "$tmp/missing" --ctx 64
check "a missing file: exit 1 naming it" \
  "$([ $? = 1 ] && grep -q "cannot open $tmp/missing" "$tmp/e.err"; echo $?)"
: >"$tmp/empty"
ppl "$tmp/e" "$tmp/empty" --ctx 4
check "an empty file: exit 2" "$([ $? = 2 ] && grep -q "holds 0 tokens" "$tmp/e.err"; echo $?)"
ppl "$tmp/e" "$tmp/ids" --ctx 3
check "--ctx 3 (nothing to score): exit 2" "$([ $? = 2 ]; echo $?)"
"$bin" bench --model synthetic:tiny --ctx 64 >/dev/null 2>"$tmp/e.err"
check "--ctx without --perplexity: exit 2" "$([ $? = 2 ] && grep -q "are for --perplexity" "$tmp/e.err"; echo $?)"
"$bin" bench --model synthetic:tiny --perplexity "$tmp/ids" --agree >/dev/null 2>"$tmp/e.err"
check "--perplexity with --agree: exit 2" "$([ $? = 2 ]; echo $?)"

echo "perplexity: $passes passed, $fails failed"
[ "$fails" = 0 ]
