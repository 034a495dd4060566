#!/usr/bin/env bash
# One accelerator-machine call: unpack the carried Debian packages, build the CUDA kernels, their
# tests and resa-kernels-bench (standalone entry, see standalone/CMakeLists.txt), run
# `ctest -L gpu`, the benchmark and a short ncu profile. Everything lands in $OUT.
#   usage (repository root): bash kernels/cuda/bench/device_run.sh [bench args...]
set -uo pipefail
source scripts/gpu_carry_env.sh  # out, deps, lib and the loader paths for the carried packages
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv >"$out/gpu.txt" 2>&1
build=build-h200
start=$(date +%s)
cmake -S kernels/cuda/bench/standalone -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES=90a -DCMAKE_PREFIX_PATH="$deps/usr" >"$out/build.log" 2>&1 &&
  timeout 300 cmake --build "$build" -j16 --target kernels_cuda_test resa-kernels-bench \
    >>"$out/build.log" 2>&1
rc=$?
echo "build rc=$rc in $(( $(date +%s) - start )) s" | tee -a "$out/build.log"
if [ $rc -ne 0 ]; then tail -40 "$out/build.log"; exit 1; fi

start=$(date +%s)
(cd "$build" && timeout 240 ctest -L gpu --output-on-failure) >"$out/ctest.log" 2>&1
echo "ctest rc=$? in $(( $(date +%s) - start )) s" | tee -a "$out/ctest.log"
grep -E "PASSED|FAILED|SKIPPED|tests passed|Failure|worst" "$out/ctest.log" | head -40

start=$(date +%s)
PYTHONUNBUFFERED=1 timeout 200 "$build/bin/resa-kernels-bench" kernels "$@" >"$out/bench.jsonl" 2>"$out/bench.txt"
echo "bench rc=$? in $(( $(date +%s) - start )) s" | tee -a "$out/bench.txt"
cat "$out/bench.txt"

if command -v ncu >/dev/null; then
  # Where the fused selection spends its time (warp stalls), batch 1, 32K and 256K contexts.
  for ctx in 32768 262144; do
    timeout 60 ncu --clock-control none -k regex:SelectKernel -c 1 --section SpeedOfLight \
      --section WarpStateStats --section Occupancy --section SourceCounters \
      "$build/bin/resa-kernels-bench" kernels --no-sdpa --models 1.5B --contexts $ctx --batches 1 \
      --iters 1 --prefill-tokens 0 >>"$out/ncu.txt" 2>&1
  done
  echo "ncu rc=$?" >>"$out/ncu.txt"
fi
