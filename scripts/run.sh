#!/usr/bin/env bash
# The main job: installs what is missing, builds, fetches the default model, and answers a chat
# prompt with it. Usage: scripts/run.sh ["your question"]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/deps.sh"
"$root/scripts/build.sh"
"$root/scripts/fetch_model.sh"
prompt=${1:-"What is the capital of France? Answer in one sentence."}
cd "$root"
exec ./build/tessera generate --chat --prompt "$prompt" --max-tokens 128
