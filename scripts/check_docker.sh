#!/usr/bin/env bash
# The Docker bar (issue 12): builds deploy/docker/Dockerfile.cpu on a Debian 12 base made here with
# debootstrap and imported into Docker (registry pulls fail in CI), runs `tessera serve` in the image
# with host networking and the default model mounted, asks it one prompt with `tessera client` from
# the same image, and lints Dockerfile.cuda (no CUDA base image here to build it on).
#
# Everything runs on a private dockerd (no bridge, no iptables, its own data root, exec root,
# pidfile and socket under a temp dir), stopped by its pid at the end; the temp dir goes with it.
# The debootstrapped base is cached as .docker-cache/bookworm-minbase.tar (kept out of the build
# context by .dockerignore); delete it to make a fresh one. Needs root (apt-get, dockerd).
# Usage: scripts/check_docker.sh   (JOBS=2 compile jobs inside the image; KEEP=1 keeps the temp dir)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
jobs=${JOBS:-2}
model=${TESSERA_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
start_s=$SECONDS
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $*"; }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }
finish() { # stops dockerd and removes what it made first, so the closing line is the last one
  cleanup
  trap - EXIT
  echo "docker checks: $passed passed, $failed failed ($((SECONDS - start_s)) s)"
  [ "$failed" = 0 ] && [ "$passed" -gt 0 ]
}

# --- tools: Debian's docker.io (its /usr/bin/docker, whatever else is on PATH) and debootstrap
missing=()
for p in docker.io debootstrap; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -f "$model" ] || "$root/scripts/fetch_model.sh"

st=$(mktemp -d /tmp/tessera-docker.XXXXXX)
sock="unix://$st/docker.sock"
docker() { /usr/bin/docker -H "$sock" "$@"; }
dockerd_pid=""
cname="tessera-ci-$$"
cleanup() {
  [ -n "$st" ] || return 0
  set +e
  if [ -n "$dockerd_pid" ]; then
    docker rm -f "$cname" >/dev/null 2>&1
    kill -TERM "$dockerd_pid" 2>/dev/null
    for _ in $(seq 150); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$dockerd_pid" 2>/dev/null
    wait "$dockerd_pid" 2>/dev/null
  fi
  # what dockerd may have left mounted under its data and exec roots, deepest first
  awk -v d="$st/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m"
  done
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $st" >&2; else rm -rf "$st"; fi
  st=""
  set -e
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. a Debian 12 minbase rootfs from the configured mirror, cached, imported as the base
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}
base_tar="$root/.docker-cache/bookworm-minbase.tar"
if [ ! -s "$base_tar" ]; then
  mkdir -p "$root/.docker-cache"
  t0=$SECONDS
  if debootstrap --variant=minbase bookworm "$st/rootfs" "$mirror" >"$st/debootstrap.log" 2>&1 \
    && tar -C "$st/rootfs" -cf "$base_tar.tmp" . && mv "$base_tar.tmp" "$base_tar"; then
    echo "debootstrap bookworm from $mirror: $((SECONDS - t0)) s" >&2
  else
    tail -20 "$st/debootstrap.log" >&2
    rm -f "$base_tar.tmp"
  fi
  rm -rf "$st/rootfs"
fi

# --- 2. a private dockerd: no bridge, nothing touches iptables or the machine's Docker state
dockerd --bridge=none --iptables=false --ip-masq=false --data-root "$st/root" --exec-root "$st/exec" \
  --pidfile "$st/dockerd.pid" -H "$sock" >"$st/dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 300); do
  docker version >/dev/null 2>&1 && break
  kill -0 "$dockerd_pid" 2>/dev/null || break
  sleep 0.1
done
if ! docker version >/dev/null 2>&1; then
  tail -20 "$st/dockerd.log" >&2
  bad "dockerd did not start"
  finish
  exit 1
fi

if [ -s "$base_tar" ] && docker import "$base_tar" tessera-base:bookworm >/dev/null; then
  ok "base image tessera-base:bookworm imported from a debootstrapped Debian 12 ($(du -h "$base_tar" | cut -f1))"
else
  bad "no Debian 12 base image (debootstrap or docker import failed)"
  finish
  exit 1
fi

# --- 3. the CPU image (host networking for apt inside the build: there is no bridge)
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- 2>/dev/null || commit="$commit-dirty"
t0=$SECONDS
if DOCKER_BUILDKIT=0 docker build --network host -f deploy/docker/Dockerfile.cpu \
  --build-arg BASE=tessera-base:bookworm --build-arg JOBS="$jobs" --build-arg GIT_COMMIT="$commit" \
  -t tessera:cpu . >"$st/build.log" 2>&1; then
  ok "Dockerfile.cpu built in $((SECONDS - t0)) s ($(docker image inspect -f '{{.Size}}' tessera:cpu | awk '{printf "%.0f MB", $1/1e6}'))"
else
  tail -30 "$st/build.log"
  bad "Dockerfile.cpu did not build (log above)"
  finish
  exit 1
fi

# --- 4. what the image is: its version line, a non-root user, the installed tree
v=$(docker run --rm --network none tessera:cpu --version 2>&1 || true)
if [[ "$v" == "tessera "*"(commit $commit, CPU only"* ]]; then
  ok "tessera --version in the image: $v"
else
  bad "tessera --version in the image printed: $v"
fi
uid=$(docker run --rm --network none --entrypoint id tessera:cpu -u 2>&1 || true)
files=$(docker run --rm --network none --entrypoint sh tessera:cpu -c \
  'ls /opt/tessera/bin/tessera /opt/tessera/share/tessera/proto/tessera/v1/inference.proto &&
   etcd --version | head -n 1 && mpirun --version | head -n 1' 2>&1 || true)
if [ -n "$uid" ] && [ "$uid" != 0 ] && [ "$(echo "$files" | grep -c .)" = 4 ]; then
  ok "runs as uid $uid; /opt/tessera has bin/tessera and the protos; $(echo "$files" | tail -2 | tr '\n' ';')"
else
  bad "image layout: uid '$uid'; $files"
fi

# --- 5. tessera serve in the image, host networking, the model mounted; one prompt answered
port=""
for _ in $(seq 50); do
  p=$((20000 + RANDOM % 20000))
  ss -Hltn "sport = :$p" 2>/dev/null | grep -q . || { port=$p; break; }
done
models=$(readlink -f "$(dirname "$model")")
t0=$SECONDS
docker run -d --name "$cname" --network host -v "$models:/models:ro" tessera:cpu \
  serve --model "/models/$(basename "$model")" --port "$port" --dir /tmp/serve >/dev/null
up=0
for _ in $(seq 600); do
  docker logs "$cname" 2>&1 | grep -q serving && { up=1; break; }
  [ "$(docker inspect -f '{{.State.Running}}' "$cname" 2>/dev/null)" = true ] || break
  sleep 0.5
done
if [ "$up" = 1 ]; then
  answer=$(timeout 300 /usr/bin/docker -H "$sock" run --rm --network host tessera:cpu client \
    --address "127.0.0.1:$port" --chat --prompt "What is the capital of France? Answer in one sentence." \
    --max-tokens 32 2>"$st/client.err" || true)
  if [ -n "$(echo "$answer" | tr -d '[:space:]')" ]; then
    ok "serve in the container answered in $((SECONDS - t0)) s (start included): $(echo "$answer" | tr '\n' ' ' | cut -c1-120)"
  else
    cat "$st/client.err"
    bad "tessera client got no answer from serve in the container"
  fi
else
  docker logs "$cname" 2>&1 | tail -20
  docker exec "$cname" sh -c 'tail -n 20 /tmp/serve/*.log' 2>/dev/null
  bad "tessera serve in the container did not come up"
fi
# SIGTERM drains and stops it; the container should end within the drain timeout
docker stop -t 40 "$cname" >/dev/null 2>&1 || true
code=$(docker inspect -f '{{.State.ExitCode}}' "$cname" 2>/dev/null || echo "?")
docker rm -f "$cname" >/dev/null 2>&1 || true
if [ "$code" = 0 ]; then ok "serve stopped on SIGTERM (docker stop), exit 0"; else bad "serve exit code on docker stop: $code"; fi

# --- 6. ranks through mpirun inside the image, as its non-root user: pp=2 gives one rank's greedy
# text (the default model has 9 heads, so pp rather than tp)
gen() {
  timeout 300 /usr/bin/docker -H "$sock" run --rm --network host -v "$models:/models:ro" tessera:cpu \
    generate --model "/models/$(basename "$model")" --prompt "The capital of France is" \
    --max-tokens 8 --threads 1 "$@" 2>>"$st/generate.err"
}
g1=$(gen || true)
g2=$(gen --pp 2 || true)
if [ -n "$(echo "$g1" | tr -d '[:space:]')" ] && [ "$g1" = "$g2" ]; then
  ok "generate --pp 2 (mpirun in the image) equals one rank: $(echo "$g2" | tr '\n' ' ')"
else
  tail -n 20 "$st/generate.err"
  bad "generate in the image: one rank '$g1', pp=2 '$g2'"
fi

# --- 7. the CUDA image cannot be built here (no nvidia/cuda base): a structural lint (of both)
for f in deploy/docker/Dockerfile.cuda deploy/docker/Dockerfile.cpu; do
  if out=$(python3 scripts/lint_dockerfile.py "$f" . 2>&1); then ok "lint: $out"; else echo "$out"; bad "lint $f"; fi
done

finish
