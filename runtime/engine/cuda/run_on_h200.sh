#!/usr/bin/env bash
# The CUDA backend on the H200 (device tool): GPU tests of runtime/engine/cuda and/or
# `resa-bench e2e`, from binaries built on a Debian 12 machine without MPI/NCCL/-march=native
# (cmake -B build-h5d -DRESA_CUDA=ON -DRESA_MPI=OFF -DRESA_NCCL=OFF -DRESA_GRPC=OFF
# -DRESA_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=90a; ninja engine_cuda_test resa-bench resa)
# carried with the call together with .carry/ (the Debian runtime libraries the image lacks).
# Usage: [AB_FLAGS="e2e flags"] run_on_h200.sh tests|bench|all [extra resa-bench e2e flags].
# Logs go to $OUT.
set -uo pipefail
what=${1:-all}
shift || true
source scripts/gpu_carry_env.sh
export OMP_WAIT_POLICY=passive
bin=${BIN:-build-h5d/bin}
nvidia-smi -L > "$out/gpu.txt" 2>&1
missing=0
for b in engine_cuda_test resa-bench resa; do
  [[ -x $bin/$b ]] || missing=1
  ldd "$bin/$b" 2>&1 | grep "not found" >> "$out/gpu.txt" && missing=1
done
cat "$out/gpu.txt"
if [[ $missing == 1 ]]; then  # the carried binaries do not run here: build them here
  cmake -S . -B build-h200cb -G Ninja -DCMAKE_BUILD_TYPE=Release -DRESA_GRPC=OFF -DRESA_MPI=OFF \
    -DRESA_NCCL=OFF -DCMAKE_CUDA_ARCHITECTURES=90a -DCMAKE_PREFIX_PATH=$deps/usr \
    -DCMAKE_LIBRARY_ARCHITECTURE=x86_64-linux-gnu > "$out/build.log" 2>&1
  timeout 400 cmake --build build-h200cb -j16 --target engine_cuda_test resa-bench resa >> "$out/build.log" 2>&1
  echo "built here: rc=$?"; grep -E "error" "$out/build.log" | head -10
  bin=build-h200cb/bin
fi
if [[ $what == tests || $what == all ]]; then
  t0=$(date +%s)
  timeout 300 "$bin/engine_cuda_test" > "$out/engine_cuda_test.log" 2>&1
  echo "engine_cuda_test rc=$? $(( $(date +%s) - t0 ))s"
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |tests? from .* ran|^\[(logits|greedy|capacity)\]|Failure|error" \
    "$out/engine_cuda_test.log" | head -60
fi
if [[ -n ${AB_FLAGS:-} ]]; then  # an extra, smaller bench first (e.g. GEMV vs cuBLAS for batches)
  t0=$(date +%s)
  timeout 200 "$bin/resa-bench" e2e $AB_FLAGS > "$out/e2e_ab.jsonl" 2> "$out/e2e_ab.log"
  echo "resa-bench e2e $AB_FLAGS rc=$? $(( $(date +%s) - t0 ))s"
  grep -E "^\| r1" "$out/e2e_ab.log"
fi
if [[ $what == bench || $what == all ]]; then
  t0=$(date +%s)
  timeout 420 "$bin/resa-bench" e2e "$@" > "$out/e2e.jsonl" 2> "$out/e2e.log"
  echo "resa-bench e2e rc=$? $(( $(date +%s) - t0 ))s"
  grep -E "error|skipped" "$out/e2e.jsonl" | head -10
  tail -45 "$out/e2e.log"
fi
