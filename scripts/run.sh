#!/usr/bin/env bash
# The main job: installs what is missing, builds, fetches the default model, starts a local
# cluster serving it (`tessera serve`: a private etcd, a coordinator and two worker replicas),
# asks it a chat prompt over gRPC with `tessera client`, and stops the cluster.
# Usage: scripts/run.sh ["your question"]   (PORT=50051 by default)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/deps.sh"
"$root/scripts/build.sh"
"$root/scripts/fetch_model.sh"
prompt=${1:-"What is the capital of France? Answer in one sentence."}
port=${PORT:-50051}
cd "$root"
dir=$(mktemp -d /tmp/tessera-run.XXXXXX)
./build/tessera serve --replicas 2 --port "$port" --dir "$dir" >"$dir/serve.out" 2>&1 &
serve=$!
trap 'kill -TERM $serve 2>/dev/null; wait $serve 2>/dev/null || true' EXIT
# serve prints one line once every replica is ready
for _ in $(seq 600); do
  grep -q serving "$dir/serve.out" 2>/dev/null && break
  kill -0 $serve 2>/dev/null || { cat "$dir/serve.out" >&2; exit 1; }
  sleep 0.5
done
grep serving "$dir/serve.out" >&2 || { echo "the cluster did not start; logs in $dir" >&2; exit 1; }
./build/tessera client --address "127.0.0.1:$port" --chat --prompt "$prompt" --max-tokens 128
./build/tessera client --address "127.0.0.1:$port" --status >&2
