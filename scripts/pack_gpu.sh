#!/usr/bin/env bash
# Packs what a lent GPU machine needs to run the GPU tests and benchmarks from this machine's
# build: that machine has CUDA, cuBLAS, NCCL, Open MPI and PyTorch, but none of our other
# libraries (gRPC, protobuf-c, jansson, PCRE2, curl, ...), and no network. Writes build-gpu/
# (ignored by git): tessera and tests/test_* stripped, and lib/ with every shared library they
# link except glibc's, the C++ runtime, the CUDA ones and Open MPI's (that machine's own are
# used: Open MPI's library must match its plugins and mpirun there).
# Usage: scripts/pack_gpu.sh [BUILD]   (default build/)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
out=$root/build-gpu
rm -rf "$out"
mkdir -p "$out/tests" "$out/lib"
bins=("$build/tessera")
for t in "$build"/tests/test_cuda_* "$build"/tests/test_e2e_*; do [ -x "$t" ] && bins+=("$t"); done
for b in "${bins[@]}"; do
  dst=$out/${b#"$build"/}
  strip -o "$dst" "$b"
done
skip='^(linux-vdso|ld-linux|libc\.|libm\.|libdl\.|librt\.|libpthread\.|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libnccl|libz\.|libssl|libcrypto|libmpi|libopen-|libhwloc|libevent)'
ldd "${bins[@]}" | awk '/=> \// {print $1, $3}' | sort -u | while read -r name path; do
  [[ $name =~ $skip ]] && continue
  cp -L "$path" "$out/lib/$name"
done
du -sh "$out" | sed 's/^/build-gpu: /'
