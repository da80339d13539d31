# Sourced by the CLI tests that score the default model on GPL-3's text (test_quantize_accuracy.sh,
# test_kv_cache_dtype.sh): `. gpl3_ppl.sh BIN ROOT BYTES`. Skips (exit 77) without the model or
# the text; sets bin, root, model, tmp (removed on exit), text (the first BYTES bytes of GPL-3),
# py, fails and passes; defines check NAME RESULT (counts a pass when RESULT is 0), ppl OUT
# [FLAGS...] (`tessera bench --perplexity text --text` into OUT, stderr in OUT.err) and field FILE
# KEY (a key of a JSON file).
bin=$1 root=$2
model="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
gpl=/usr/share/common-licenses/GPL-3
for f in "$model" "$gpl"; do
  if [ ! -r "$f" ]; then
    echo "skipped: $f is missing (scripts/fetch_model.sh; Debian's base-files)"
    exit 77
  fi
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
text=$tmp/gpl3.txt
head -c "$3" "$gpl" >"$text"
py=/usr/bin/python3
fails=0 passes=0
check() { # name, condition result
  if [ "$2" = 0 ]; then passes=$((passes + 1)); else echo "FAIL: $1"; fails=$((fails + 1)); fi
}
ppl() { # out_file [flags...]
  local out=$1
  shift
  "$bin" bench --model "$model" --perplexity "$text" --text "$@" >"$out" 2>"$out.err"
}
field() { $py -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
