#!/usr/bin/env bash
# Installs the Debian packages tessera builds and tests with, and the few PyPI packages its tests
# use that Debian does not package (pinned). Idempotent: installs only what is missing, and runs
# apt-get update only then. Needs root (or sudo) when something is missing.
set -euo pipefail
pkgs=(build-essential cmake pkg-config python3 python3-pip clang libclang-rt-14-dev
      libpcre2-dev libjansson-dev libcmocka-dev libopenmpi-dev openmpi-bin
      libgrpc-dev libprotobuf-c-dev protobuf-c-compiler libcurl4-openssl-dev libmicrohttpd-dev
      libssl-dev libgnutls28-dev openssl
      etcd-server etcd-client
      python3-grpcio python3-grpc-tools python3-pytest slurm-wlm munge
      python3-numpy python3-yaml)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# PyPI, into Debian's python3 (the integration tests run /usr/bin/python3, which has grpcio,
# numpy and PyYAML): the official OpenAI client for tests/integration/test_openai_http.py, and
# gguf-py for test_forward_hf_bf16, which converts the default model into a Hugging Face directory
# at test time (tests/reference/convert_to_hf_bf16.py).
pip_pkgs=(openai==3.51.0 gguf==0.19.0)
for spec in "${pip_pkgs[@]}"; do
  name=${spec%%==*}
  have=$(/usr/bin/python3 -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
  if [ "$have" != "${spec#*==}" ]; then
    echo "installing from PyPI: $spec" >&2
    $sudo /usr/bin/python3 -m pip install -q --break-system-packages "$spec"
  fi
done
