#!/usr/bin/env bash
# Serving on GPUs: `tessera serve --device cuda` with 2 replicas of synthetic llama3-8b (one GPU
# each), 16 concurrent `tessera client` streams, each output compared with offline
# `tessera generate --device cuda`; prints a table last. Logs go to $OUT (default /tmp/serve-gpu).
# Binaries: build/tessera, or, on a machine without our -dev packages (the lent GPU machines),
# build-gpu/serve.tar.xz holding tessera, etcd and lib/ (the non-CUDA, non-MPI shared libraries
# from `ldd build/tessera`), unpacked to /tmp/t.
set -u
export NCCL_NVLS_ENABLE=0
OUT=${OUT:-/tmp/serve-gpu}; mkdir -p "$OUT"
if [ -f build-gpu/serve.tar.xz ]; then
  T=/tmp/t; mkdir -p $T && tar xJf build-gpu/serve.tar.xz -C $T
  export LD_LIBRARY_PATH=$T/lib TESSERA_ETCD_BIN=$T/etcd
else
  T=build
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/gpus.txt
M=synthetic:llama3-8b
IDS=128000,791,6864,315,9822,374,12366,13,578,7160,374,264,3363,1405,264,3544
t0=$(date +%s)
timeout 120 $T/tessera generate --device cuda --model $M --prompt-ids $IDS --max-tokens 32 --show-ids > $OUT/offline.txt 2> $OUT/offline.err
echo "offline rc=$? ($(( $(date +%s) - t0 )) s)"; tail -1 $OUT/offline.txt; tail -1 $OUT/offline.err
$T/tessera serve --model $M --device cuda --replicas 2 --port 50051 --dir $OUT/serve > $OUT/serve.out 2>&1 &
S=$!
for i in $(seq 240); do grep -q serving $OUT/serve.out && break; kill -0 $S || break; sleep 0.5; done
cat $OUT/serve.out
# 16 concurrent clients, same prompt: every output must equal offline
t1=$(date +%s.%N)
for i in $(seq 16); do
  timeout 120 $T/tessera client --prompt-ids $IDS --max-tokens 32 --show-ids > $OUT/c$i.txt 2> $OUT/c$i.err &
done
wait $(jobs -p | grep -v "^$S$") 2>/dev/null
t2=$(date +%s.%N)
same=0; for i in $(seq 16); do [ "$(tail -1 $OUT/c$i.txt)" = "$(tail -1 $OUT/offline.txt)" ] && same=$((same+1)); done
$T/tessera client --status | tee $OUT/status.txt
kill -TERM $S; wait $S
echo "serve rc=$?"
printf "\n| check | result |\n|---|---|\n"
printf "| 16 concurrent streams (2 GPU replicas) equal offline generate --device cuda | %d / 16 |\n" $same
awk -v a=$t1 -v b=$t2 'BEGIN{printf "| wall time of the 16 streams x 32 tokens | %.2f s |\n", b-a}'
