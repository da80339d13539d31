#!/usr/bin/env bash
# Benchmark: prompt and decode tokens/s of the default model on this machine, tessera beside
# llama.cpp (the llama-cpp-python package, built from PyPI into .venv-bench/ on first use), in
# one run, same prompt length, same generated length, same thread count.
# Usage: scripts/bench_cpu.sh [prompt_tokens] [gen_tokens] [repeats]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pt=${1:-128} gt=${2:-64} reps=${3:-5} threads=$(nproc)
"$root/scripts/deps.sh"
"$root/scripts/build.sh" >/dev/null
"$root/scripts/fetch_model.sh"
# LLAMA_CPP_PYTHON: a python that already has llama_cpp, to skip the build.
venv="$root/.venv-bench"
py=${LLAMA_CPP_PYTHON:-$venv/bin/python}
if ! "$py" -c 'import llama_cpp' 2>/dev/null; then
  echo "building llama-cpp-python into $venv (several minutes, once)..." >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet numpy llama-cpp-python
  py=$venv/bin/python
fi
model="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
ours=$("$root/build/tessera" bench --model "$model" --prompt-tokens "$pt" --gen-tokens "$gt" \
       --repeats "$reps" --threads "$threads")
peer=$("$py" "$root/tests/reference/bench_llamacpp.py" --model "$model" \
       --prompt-tokens "$pt" --gen-tokens "$gt" --threads "$threads" --repeats "$reps")
echo "$ours"
echo "$peer"
python3 - "$ours" "$peer" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{'':18}{'tessera':>10}{'llama.cpp':>12}{'ratio':>8}")
for k, name in (("prompt_tps", "prompt tok/s"), ("decode_tps", "decode tok/s")):
    print(f"{name:18}{a[k]:10.1f}{b[k]:12.1f}{a[k] / b[k]:8.2f}")
PY
