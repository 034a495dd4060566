#!/usr/bin/env bash
# One accelerator-machine call for selection work: build, `ctest -L gpu`, the kernel benchmark
# (no SDPA, no prefill), then the same benchmark with a baseline selection.cu swapped in, so the
# before/after figures come from one machine and one run. Everything lands in $OUT.
#   usage (repository root): bash kernels/cuda/bench/select_ab.sh BASELINE_SELECTION_CU [ncu|split]
# `split` also times the new kernel with its selection tail cut off (scoring + arrival only) at
# 32K and 256K batch 1; the sparse decode after it may then fail, which is expected.
set -uo pipefail
base_cu="$1"
source scripts/gpu_carry_env.sh  # out, deps, lib and the loader paths for the carried packages
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv >"$out/gpu.txt" 2>&1
build=build-h200
bench_args=(kernels --no-sdpa --prefill-tokens 0)
start=$(date +%s)
cmake -S kernels/cuda/bench/standalone -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES=90a -DCMAKE_PREFIX_PATH="$deps/usr" >"$out/build.log" 2>&1 &&
  timeout 240 cmake --build "$build" -j16 --target kernels_cuda_test resa-kernels-bench \
    >>"$out/build.log" 2>&1
rc=$?
echo "build rc=$rc in $(( $(date +%s) - start )) s" | tee -a "$out/build.log"
if [ $rc -ne 0 ]; then tail -40 "$out/build.log"; exit 1; fi

start=$(date +%s)
(cd "$build" && timeout 150 ctest -L gpu --output-on-failure) >"$out/ctest.log" 2>&1
echo "ctest rc=$? in $(( $(date +%s) - start )) s" | tee -a "$out/ctest.log"
grep -E "FAILED|tests passed|Failure|Expected|Which is|rep [01]" "$out/ctest.log" | head -30
grep -E "^\[==========\]|PASSED" "$out/ctest.log" | tail -3

start=$(date +%s)
timeout 120 "$build/bin/resa-kernels-bench" "${bench_args[@]}" >/tmp/bench_new.jsonl 2>"$out/bench_new.txt"
echo "bench (new) rc=$? in $(( $(date +%s) - start )) s" | tee -a "$out/bench_new.txt"

start=$(date +%s)
cp kernels/cuda/selection.cu /tmp/selection_new.cu
cp "$build/bin/resa-kernels-bench" /tmp/bench_new
cp "$base_cu" kernels/cuda/selection.cu
timeout 120 cmake --build "$build" -j16 --target resa-kernels-bench >"$out/build_base.log" 2>&1 &&
  timeout 120 "$build/bin/resa-kernels-bench" "${bench_args[@]}" >/tmp/bench_base.jsonl \
    2>"$out/bench_base.txt"
echo "baseline build+bench rc=$? in $(( $(date +%s) - start )) s" | tee -a "$out/bench_base.txt"
cp /tmp/selection_new.cu kernels/cuda/selection.cu
echo "== baseline ($base_cu) =="; grep -E "fused_select|resa_step|copy ceiling|rc=" "$out/bench_base.txt"
echo "== new =="; grep -E "fused_select|resa_step|copy ceiling|rc=|selection" "$out/bench_new.txt"

# ncu last (the new kernel's binary), one launch each at 1.5B 32K b1 (the tail dominates) and
# 7B 256K b1: stall reasons per issued instruction, no_instruction being instruction fetch.
if [ "${2:-}" = ncu ] && command -v ncu >/dev/null; then
  st=smsp__average_warps_issue_stalled
  for shape in "1.5B 32768" "7B 262144"; do
    set -- $shape
    timeout 60 ncu --clock-control none -k regex:SelectKernel -c 1 --metrics \
      gpu__time_duration.sum,${st}_no_instruction_per_issue_active.ratio,${st}_long_scoreboard_per_issue_active.ratio,${st}_barrier_per_issue_active.ratio,${st}_short_scoreboard_per_issue_active.ratio,${st}_wait_per_issue_active.ratio,smsp__inst_executed.sum \
      /tmp/bench_new kernels --no-sdpa --models $1 --contexts $2 --batches 1 \
      --iters 1 --prefill-tokens 0 >>"$out/ncu.txt" 2>&1
  done
  grep -E "==PROF==|gpu__time|stalled|inst_executed" "$out/ncu.txt" | head -20
fi

if [ "${2:-}" = split ]; then
  sed -i 's/^  if (!ArriveLast(a, b, h, n_ctas, s_last)) return;$/&\n  if (M > 0) return;  \/\/ split: no tail/' kernels/cuda/selection.cu
  grep -c "split: no tail" kernels/cuda/selection.cu
  timeout 120 cmake --build "$build" -j16 --target resa-kernels-bench >>"$out/build_base.log" 2>&1
  for m in 1.5B 7B; do
    for ctx in 32768 262144; do
      timeout 30 "$build/bin/resa-kernels-bench" kernels --no-sdpa --prefill-tokens 0 --models $m \
        --contexts $ctx --batches 1 2>/dev/null | grep fused_select | sed 's/^/no-tail /'
    done
  done
  cp /tmp/selection_new.cu kernels/cuda/selection.cu
fi
