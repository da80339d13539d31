#!/usr/bin/env bash
# GPU checks and benchmarks, in parts, each logged, with a summary table last.
#
# Usage: scripts/bench_gpu.sh PART...
#   info      GPUs, driver, libraries, mpirun
#   ops       tests/gpu/test_cuda_ops (every op against the CPU backend)
#   opsbench  the same with --bench (GEMV, GEMM and attention timings)
#   sanitize  compute-sanitizer memcheck over test_cuda_ops --quick
#   sample    tests/gpu/test_cuda_sample (sampling on the GPU against worker/sampling.c)
#   graphs    decode through CUDA graphs equals decode op by op (test_e2e_agree graphs)
#   e2e       default model and synthetic:llama3-8b: CUDA teacher-forced argmax vs CPU >= 99%
#   e2e-8b    the llama3-8b half of e2e only; e2e-default the other half
#   tp3       default model: greedy 64 tokens at TP=3 equal TP=1 (3 GPUs)
#   tp8b      llama3-8b: teacher-forced argmax at TP=2 and TP=4 vs TP=1 >= 99% (4 GPUs)
#   generate  `tessera generate --device cuda` on the default model, and its engine speed
#   bench     the llama3-8b table: decode tok/s at batch 1, 8, 64, 256 with the fraction of the
#             memory roofline; prefill of a 2048-token prompt as a fraction of the bf16 GEMM rate
#   eager     the same decode rows with CUDA graphs off (TESSERA_GRAPHS=0), for comparison
#   peer      the same shapes through PyTorch + transformers (scripts/bench_gpu_peer.py)
#   tp70b     synthetic llama3-70b at TP=$TP (default 4; TP GPUs, each rank generating only its
#             slices): decode at batch 1 and 64 with rank 0's fraction of the memory roofline,
#             prefill
#   profile   Nsight Compute kernel durations of llama3-8b batch-1 decode steps, op by op
#             (TESSERA_GRAPHS=0), summed per kernel for the last step (scripts/ncu_step_times.py)
#   agree-tp4 teacher-forced argmax at TP=$TP vs TP=1 through `tessera bench --agree`:
#             synthetic:tiny-gqa4, then synthetic:llama3-8b
# Environment: PART_LIMIT (seconds: caps every part's time limit), TP (the ranks of tp70b and agree-tp4; default 4), BUILD (a build folder holding
# tessera and tests/; default build/; one made by scripts/pack_gpu.sh brings lib/), OUT (where logs
# go; default /tmp/tessera-gpu), LD_LIBRARY_PATH for libraries the binaries were carried with.
# NVLink multicast stays off (NCCL_NVLS_ENABLE=0). TESSERA_REQUIRE_GPU=1: a GPU test that finds no
# device (or a failing driver) fails instead of skipping; a part that exits 77 (e.g. tp3 with
# fewer than 3 GPUs) shows as SKIP.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$root/build}
out=${OUT:-/tmp/tessera-gpu}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export TESSERA_REQUIRE_GPU=1
export TESSERA_BIN=$build/tessera TESSERA_SOURCE_DIR=$root
tp=${TP:-4}
summary=$out/summary.txt
: >"$summary"
cd "$root"

[ -d "$build/lib" ] && export LD_LIBRARY_PATH=$build/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# Libraries a carried build cannot find (CUDA's runtime, cuBLAS, NCCL live in different places on
# different images): the first folder holding each is added to LD_LIBRARY_PATH.
for lib in $(ldd "$build/tessera" "$build/tests/test_e2e_agree" 2>/dev/null |
  awk '/not found/ {print $1}' | sort -u); do
  hit=$(find /usr/local /usr/lib /opt /usr/lib64 -name "$lib" 2>/dev/null | head -1)
  [ -n "$hit" ] && export LD_LIBRARY_PATH=$(dirname "$hit")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  echo "library $lib: ${hit:-NOT FOUND}"
done

# part NAME TIMEOUT CMD...: runs CMD with a time limit, logs it, notes PASS/SKIP/FAIL and seconds.
part() {
  local name=$1 limit=$2
  [ -n "${PART_LIMIT:-}" ] && [ "$PART_LIMIT" -lt "$limit" ] && limit=$PART_LIMIT
  shift 2
  local t0=$SECONDS rc
  echo "=== $name: $*" | tee -a "$out/all.log"
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  cat "$out/$name.log" >>"$out/all.log"
  printf '%-12s %-5s rc=%-3s %4ss\n' "$name" "$(case $rc in 0) echo PASS ;; 77) echo SKIP ;; *) echo FAIL ;; esac)" \
    "$rc" "$((SECONDS - t0))" >>"$summary"
  tail -n 25 "$out/$name.log"
  return 0
}

info() {
  nvidia-smi -L
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  nproc
  free -g | head -2
  command -v mpirun && mpirun --version | head -1
  ldd "$build/tessera" | grep -E 'not found|cuda|cublas|nccl|mpi' || true
  ldd "$build/tests/test_e2e_agree" | grep -E 'not found' || true
}

for p in "$@"; do
  case $p in
  info) info 2>&1 | tee "$out/info.log" ;;
  ops) part ops 600 "$build/tests/test_cuda_ops" ;;
  opsbench) part opsbench 600 "$build/tests/test_cuda_ops" --bench --log "$out/ops-detail.log" ;;
  sanitize)
    part sanitize 600 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 1 \
      "$build/tests/test_cuda_ops" --quick
    ;;
  sample) part sample 300 "$build/tests/test_cuda_sample" ;;
  graphs) part graphs 600 "$build/tests/test_e2e_agree" graphs ;;
  e2e) part e2e 900 "$build/tests/test_e2e_agree" default 8b ;;
  e2e-default) part e2e-default 300 "$build/tests/test_e2e_agree" default ;;
  e2e-8b) part e2e-8b 600 "$build/tests/test_e2e_agree" 8b ;;
  tp3) part tp3 300 "$build/tests/test_e2e_agree" tp3 ;;
  tp8b) part tp8b 900 "$build/tests/test_e2e_agree" tp8b ;;
  generate)
    part generate 300 "$build/tessera" generate --device cuda --prompt \
      'Write one sentence about the sea.' --chat --max-tokens 64
    part engine 300 "$build/tessera" bench --device cuda --prompt-tokens 128 --gen-tokens 64
    ;;
  bench)
    part bench 900 "$build/tessera" bench --device cuda --model synthetic:llama3-8b \
      --batches 1,8,64,256 --context 512 --steps 32 --prefill-tokens 2048 --repeats 5
    ;;
  eager)
    part eager 600 env TESSERA_GRAPHS=0 "$build/tessera" bench --device cuda \
      --model synthetic:llama3-8b --batches 1,8,64 --context 512 --steps 32 --prefill-tokens 16 \
      --repeats 1
    ;;
  tp70b)
    part tp70b 420 "$build/tessera" bench --device cuda --tp "$tp" --model synthetic:llama3-70b \
      --batches 1,64 --context 512 --steps 32 --prefill-tokens 2048 --repeats 3
    ;;
  profile)
    ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    part profile 300 env TESSERA_GRAPHS=0 "$ncu" --clock-control none --csv \
      --metrics gpu__time_duration.sum --launch-count 4000 --log-file "$out/profile.ncu.log" \
      "$build/tessera" bench --device cuda --model synthetic:llama3-8b --batches 1 --context 512 \
      --steps 3 --prefill-tokens 16 --repeats 1
    python3 "$root/scripts/ncu_step_times.py" "$out/profile.ncu.log" >"$out/profile-step.txt" 2>&1
    ;;
  agree-tp4)
    for m in tiny-gqa4 llama3-8b; do
      part "agree-$m-tp1" 150 "$build/tessera" bench --device cuda --agree \
        --model synthetic:$m --prompt-tokens 128 --save-ids "$out/ids-$m.txt"
      part "agree-$m-tp$tp" 150 "$build/tessera" bench --device cuda --agree --tp "$tp" \
        --model synthetic:$m --prompt-tokens 128 --ref-ids "$out/ids-$m.txt" --min-agree 0
    done
    ;;
  peer)
    part peer 900 env PYTHONUNBUFFERED=1 python3 "$root/scripts/bench_gpu_peer.py" \
      --batches 1,8,64,256 --context 512 --steps 32 --prefill-tokens 2048
    ;;
  *) echo "unknown part '$p'" >&2 ;;
  esac
done

echo
echo "=== results (logs in $out)"
for f in e2e e2e-default e2e-8b tp8b; do
  [ -f "$out/$f.log" ] && grep -hE '^\{"model"|PASS|FAIL' "$out/$f.log"
done
[ -f "$out/tp3.log" ] && grep -hE 'PASS|FAIL|^tp' "$out/tp3.log"
[ -f "$out/engine.log" ] && grep -h '^{' "$out/engine.log"
[ -f "$out/bench.log" ] && grep -hE '^\||^prefill|^device' "$out/bench.log"
[ -f "$out/eager.log" ] && echo "graphs off:" && grep -hE '^\||^device' "$out/eager.log"
for f in ops opsbench sanitize sample; do
  [ -f "$out/$f.log" ] && grep -hE 'comparisons|checks|ERROR SUMMARY|FAIL|of copy|GB/s|TFLOP' "$out/$f.log" | tail -n 40
done
[ -f "$out/graphs.log" ] && grep -hE 'PASS|FAIL' "$out/graphs.log"
[ -f "$out/tp70b.log" ] && grep -hE '^\||^tp=|^prefill|^device|weights' "$out/tp70b.log"
for f in "$out"/agree-*-tp"$tp".log; do [ -f "$f" ] && grep -h '^{' "$f"; done
[ -f "$out/profile-step.txt" ] && head -n 30 "$out/profile-step.txt"
[ -f "$out/peer.log" ] && grep -hE '^\||^prefill|^device|^torch' "$out/peer.log"
cat "$summary"
