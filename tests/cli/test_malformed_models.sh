#!/usr/bin/env bash
# The malformed-model suite (issue 18): tests/cli/malformed_models.py writes a tiny GGUF model and
# Hugging Face directory and one mutation of them per case, then checks that `tessera generate`
# and `tessera plan` give each a specific error, in under 1 s of CPU time and 300 MB over the binary's own RSS.
# Usage: test_malformed_models.sh path/to/tessera repo_root
set -euo pipefail
bin=$1 root=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3 "$root/tests/cli/malformed_models.py" "$bin" "$tmp"
