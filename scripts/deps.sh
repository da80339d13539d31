#!/usr/bin/env bash
# Installs the Debian packages tessera builds and tests with, and gguf-py from PyPI (pinned; Debian
# does not package it). Idempotent: installs only what is missing, and runs apt-get update only
# then. Needs root (or sudo) when something is missing.
set -euo pipefail
pkgs=(build-essential cmake pkg-config python3 python3-pip clang libclang-rt-14-dev
      libpcre2-dev libjansson-dev libcmocka-dev libopenmpi-dev openmpi-bin
      libgrpc-dev libprotobuf-c-dev protobuf-c-compiler libcurl4-openssl-dev etcd-server etcd-client
      python3-grpcio python3-grpc-tools python3-pytest slurm-wlm munge
      python3-numpy python3-yaml)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# gguf-py, into Debian's python3 beside its numpy and PyYAML: test_forward_hf_bf16 converts the
# default model into a Hugging Face directory at test time (tests/reference/convert_to_hf_bf16.py).
gguf_pin=0.19.0
if [ "$(/usr/bin/python3 -c 'import importlib.metadata as m; print(m.version("gguf"))' 2>/dev/null)" != "$gguf_pin" ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing from PyPI: gguf==$gguf_pin" >&2
  $sudo /usr/bin/python3 -m pip install -q --break-system-packages "gguf==$gguf_pin"
fi
