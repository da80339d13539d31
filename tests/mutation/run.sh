#!/usr/bin/env bash
# Test of the tests: plants each known bug in a scratch copy of the tree, rebuilds only the test
# programs that should catch it, runs them and expects each mutant to fail at least one of them.
# Not part of CI (a few minutes on 2 cores); run on demand, and put its table in
# docs/correctness.md. Also checks, in the same copy (which has no models/), that the unit tests
# needing the default model exit 77 (skipped) instead of passing.
#
# Usage: tests/mutation/run.sh [MUTATION...]   (default: all; names in the table below; the
# unmutated baseline runs the tests the chosen mutations name)
# Environment: JOBS (build parallelism, default 2), KEEP=1 keeps the scratch copy, TEST_TIMEOUT
# (seconds per test program, default 1200 as in ctest: test_engine's default-model batching took
# over 600 s once beside other builds at a load of 11 on 2 cores).
# Exit status: 0 when every mutant was caught and the skips are 77, 1 otherwise.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
jobs=${JOBS:-2}
scratch=$(mktemp -d /tmp/tsr-mutation-XXXXXX)
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$scratch"' EXIT

# name | file | exact text | replacement | tests expected to catch it (one line each; \n in the
# texts stands for a newline)
mutations=(
  "cancel-leak|worker/engine.c|TSR_FINISH_CANCELLED);\n            remove_seq(e, i);|TSR_FINISH_CANCELLED);\n            e->seqs[i]->n_blocks = 0; /* MUTANT: blocks never returned */\n            remove_seq(e, i);|test_engine"
  "logprob-no-lse|worker/sampling.c|(double)logits[pick] - maxl - log(sum)|(double)logits[pick] - maxl|test_sampling test_logprobs"
  "temperature-ignored|worker/sampling.c|expf((logits[s->idx[i]] - maxl) / s->p.temperature)|expf(logits[s->idx[i]] - maxl)|test_sampling"
  "penalty-negative-divides|worker/sampling.c|*l > 0 ? *l / pen : *l * pen|*l > 0 ? *l / pen : *l / pen|test_sampling"
  "rope-f32-angle-past-table|kernels/cpu/attention.c|double a = (double)pos * (double)freq[i];|double a = (float)pos * freq[i];|test_rope_long"
  "hf-qk-rows-not-unpermuted|tests/reference/convert_to_hf_bf16.py|    if heads:\n        a = unpermute_rows(a, heads)|    if False:  # MUTANT: Q/K rows left in GGUF's order\n        a = unpermute_rows(a, heads)|test_forward_hf_bf16"
  "hf-last-shard-ignored|model/safetensors.c|        if (i && !strcmp(files[i], files[i - 1])) continue;|        if (i && !strcmp(files[i], files[i - 1])) continue;\n        if (!strcmp(files[i], files[nf - 1])) break; /* MUTANT */|test_forward_hf_bf16"
)

echo "== scratch copy of $root (tracked and untracked files, no models/) in $scratch"
(cd "$root" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -P -t "$scratch" 2>/dev/null)
rm -rf "$scratch/models"
cmake -S "$scratch" -B "$scratch/build" -DCMAKE_BUILD_TYPE=Release -DTESSERA_CUDA=OFF >/dev/null || exit 1
# the default model, for the tests that read it; the skip check below runs without it
model=$(readlink -f "$root/models/SmolLM2-135M-Instruct.Q4_1.gguf" 2>/dev/null || true)

# the tests that need the default model: without it each must exit 77, never pass or fail
skip_tests="test_chat test_tokenizer test_logprobs test_engine test_forward_golden test_gguf
  test_config test_shard_plan test_forward_hf_bf16"
selected() { # the mutations named on the command line (all when none)
  for m in "${mutations[@]}"; do
    name=${m%%|*}
    if [ ${#names[@]} -eq 0 ] || printf '%s\n' "${names[@]}" | grep -qx "$name"; then echo "$m"; fi
  done
}
names=("$@")
# the tests the selected mutations expect to fail: the baseline runs these unmutated
base_tests=$(selected | awk -F'|' '{print $5}' | tr ' ' '\n' | sort -u | tr '\n' ' ')
all_targets=$(printf '%s\n' $skip_tests $base_tests | sort -u | tr '\n' ' ')
echo "== building $all_targets"
cmake --build "$scratch/build" -j"$jobs" --target $all_targets >"$scratch/build.log" 2>&1 ||
  { tail -n 30 "$scratch/build.log"; exit 1; }

status=0
echo "== skips without the default model (expect exit 77)"
for t in $skip_tests; do
  rc=0
  "$scratch/build/tests/$t" >"$scratch/$t.skip.log" 2>&1 || rc=$?
  reason=$(grep -m1 "^skipped:" "$scratch/$t.skip.log" || echo "(no reason printed)")
  printf '%-21s exit %-3s %s\n' "$t" "$rc" "$reason"
  [ "$rc" = 77 ] || status=1
done

mkdir -p "$scratch/models"
if [ -n "$model" ] && [ -f "$model" ]; then
  ln -s "$model" "$scratch/models/SmolLM2-135M-Instruct.Q4_1.gguf"
else
  echo "the default model is missing (scripts/fetch_model.sh): cannot run the mutants"
  exit 1
fi

run_tests() { # tests... ; prints "name:rc" for each
  for t in "$@"; do
    rc=0
    timeout "${TEST_TIMEOUT:-1200}" "$scratch/build/tests/$t" >"$scratch/$t.log" 2>&1 || rc=$?
    printf '%s:%s ' "$t" "$rc"
  done
}

echo "== baseline (unmutated): every test must pass"
# shellcheck disable=SC2086
base=$(run_tests $base_tests)
echo "$base"
case "$base" in *:124*) echo "baseline timed out (TEST_TIMEOUT): a mutant's timeout would prove nothing"; exit 1 ;; esac
case "$base" in *:[1-9]*) echo "baseline fails: fix the tree first"; exit 1 ;; esac

printf '\n%-26s %-18s %-30s %s\n' "mutation" "file" "caught by" "result"
for m in "${mutations[@]}"; do
  IFS='|' read -r name file from to tests <<<"$m"
  if [ ${#names[@]} -gt 0 ] && ! printf '%s\n' "${names[@]}" | grep -qx "$name"; then continue; fi
  cp "$scratch/$file" "$scratch/$file.orig"
  if ! FROM="$from" TO="$to" python3 - "$scratch/$file" <<'PY'
import os, sys
p = sys.argv[1]
s = open(p).read()
src, dst = (os.environ[k].replace("\\n", "\n") for k in ("FROM", "TO"))
n = s.count(src)
if n != 1:
    sys.exit("%s: the text to mutate occurs %d times (the source changed: update the mutation)" % (p, n))
open(p, "w").write(s.replace(src, dst))
PY
  then
    printf '%-26s %-18s %-30s %s\n' "$name" "$file" "-" "NOT APPLIED"
    status=1
    continue
  fi
  # shellcheck disable=SC2086
  if ! cmake --build "$scratch/build" -j"$jobs" --target $tests >"$scratch/build.log" 2>&1; then
    printf '%-26s %-18s %-30s %s\n' "$name" "$file" "-" "BUILD FAILED"
    tail -n 20 "$scratch/build.log"
    status=1
  else
    # shellcheck disable=SC2086
    res=$(run_tests $tests)
    caught=""
    for r in $res; do [ "${r#*:}" != 0 ] && caught="$caught ${r%%:*}(exit ${r#*:})"; done
    if [ -n "$caught" ]; then
      printf '%-26s %-18s %-30s %s\n' "$name" "$file" "${caught# }" "caught"
      for r in $res; do # which checks failed, and the first message
        t=${r%%:*}
        [ "${r#*:}" = 0 ] && continue
        failed=$(sed -n 's/^\[  FAILED  \] \(test_[a-z0-9_]*\|GROUP SETUP\)$/\1/p' "$scratch/$t.log" | sort -u | tr '\n' ' ')
        echo "    $t: failed ${failed:-(no cmocka summary: crashed?)}"
        grep -m1 -E "^ERROR: |\[  ERROR   \] --- [^[]" "$scratch/$t.log" | sed "s/^/      /"
      done
    else
      printf '%-26s %-18s %-30s %s\n' "$name" "$file" "none of: $tests" "MISSED"
      status=1
    fi
  fi
  mv "$scratch/$file.orig" "$scratch/$file"
done
# leave the scratch build unmutated
exit $status
