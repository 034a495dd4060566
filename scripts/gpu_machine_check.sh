#!/usr/bin/env bash
# Builds the whole project on a GPU machine whose image lacks some Debian -dev packages (the
# H200 image: no abseil, PCRE2, utf8proc, spdlog/fmt, CLI11, nlohmann-json, gtest/gmock or
# OpenBLAS headers, no gRPC or prometheus-cpp), runs `ctest -L gpu` and the CPU unit tests of the
# kernels, engine and parallel layers, then (when gRPC resolves) the control plane on the GPU
# (scripts/gpu_serving_check.sh on a random-weight R1-Distill-Qwen-1.5B-shaped model), TP x SP
# GPU ranks under mpirun (scripts/gpu_parallel_check.sh, same model) and, with
# E2E="resa-bench e2e flags", the end-to-end decode benchmark.
# Carry the packages in .carry/ (ignored by git), fetched on a Debian 12 machine:
#   mkdir -p .carry && cd .carry && apt-get download libabsl-dev libabsl20220623 libpcre2-dev \
#     libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libutf8proc-dev libutf8proc2 \
#     libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 libcli11-dev nlohmann-json3-dev libgtest-dev \
#     libgmock-dev libopenblas-dev libopenblas-pthread-dev libopenblas0-pthread libopenblas0 \
#     libgfortran5 libquadmath0
# and, for the serving part, gRPC and prometheus-cpp (12 MB):
#     apt-get download libgrpc++-dev libgrpc++1.51 libgrpc29 libgrpc-dev protobuf-compiler-grpc \
#     prometheus-cpp-dev libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 \
#     libprometheus-cpp-push1.0 libcivetweb-dev libcivetweb1 libre2-dev libre2-9 libc-ares-dev \
#     libc-ares2 libssl-dev civetweb libcurl4-openssl-dev libcurl4
# Outputs (logs) go to $OUT (default /tmp/out).
set -uo pipefail
source "$(dirname "$0")/gpu_carry_env.sh"
nvidia-smi -L > $out/gpu.txt 2>&1
which mpirun mpicc >> $out/gpu.txt 2>&1; ls /usr/include/nccl.h /usr/lib/x86_64-linux-gnu/libnccl* >> $out/gpu.txt 2>&1
build=build-h200all
rm -rf $build
t0=$(date +%s)
cmake -S . -B $build -G Ninja -DCMAKE_BUILD_TYPE=Release -DRESA_GRPC=${RESA_GRPC:-AUTO} \
  -DCMAKE_CUDA_ARCHITECTURES=90a -DCMAKE_PREFIX_PATH=$deps/usr \
  -DCMAKE_LIBRARY_ARCHITECTURE=x86_64-linux-gnu > $out/configure.log 2>&1 || { tail -30 $out/configure.log; exit 1; }
grep -E "resa 0.1.0|OpenBLAS" $out/configure.log
# First what the GPU tests and the benchmarks need (nothing of the control plane), so a gRPC
# problem cannot cost them; the programs that link the control plane build meanwhile.
timeout 330 cmake --build $build -j16 --target kernels_cuda_test engine_cuda_test engine_test \
  kernels_cpu_test resa-bench resa-make-model \
  $(grep -q "MPI=ON" $out/configure.log && echo parallel_test) \
  $(grep -q "NCCL=ON" $out/configure.log && echo nccl_communicator_test) > $out/build.log 2>&1
echo "build rc=$? $(( $(date +%s) - t0 ))s"; grep -E "error" $out/build.log | head -20
programs="resa resa-worker"
grep -q "gRPC=ON" $out/configure.log && programs="$programs resa-coordinator resa-client"
(timeout 300 cmake --build $build -j8 --target $programs > $out/build_programs.log 2>&1
 echo "programs ($programs) build rc=$?" >> $out/build_programs.log) &
programs_pid=$!
model=/tmp/r1-distill-qwen-1.5b
(rm -rf $model; $build/bin/resa-make-model --shape r1-distill-qwen-1.5b --out $model -q \
   > $out/make_model.log 2>&1; echo "resa-make-model rc=$?" >> $out/make_model.log) &
model_pid=$!

(cd $build && timeout 420 ctest -L gpu --output-on-failure > $out/ctest_gpu.log 2>&1)
echo "ctest gpu rc=$?"; grep -E "Test +#|tests passed|SKIPPED\]|FAILED" $out/ctest_gpu.log | head -20
(cd $build && timeout 60 ctest -R "engine_test|kernels_cpu_test|parallel_test" > $out/ctest_cpu.log 2>&1)
echo "ctest cpu rc=$?"; grep -E "Test +#|tests passed" $out/ctest_cpu.log | head

wait $programs_pid; tail -1 $out/build_programs.log; grep -E "error" $out/build_programs.log | head -10
wait $model_pid; tail -1 $out/make_model.log
if grep -q "gRPC=ON" $out/configure.log && [ -x $build/bin/resa-client ] && [ -f $model/config.json ]; then
  t0=$(date +%s)
  timeout 300 bash scripts/gpu_serving_check.sh $build $model $out/serving > $out/serving.log 2>&1
  echo "serving check rc=$? $(( $(date +%s) - t0 ))s"; cat $out/serving.log
else
  echo "serving check skipped: gRPC off in this build (carry the gRPC packages listed above)"
fi
if [ -x $build/bin/resa-worker ] && [ -f $model/config.json ] && grep -q "MPI=ON" $out/configure.log; then
  t0=$(date +%s)
  timeout 400 bash scripts/gpu_parallel_check.sh $build $model $out/parallel > $out/parallel.log 2>&1
  echo "parallel check rc=$? $(( $(date +%s) - t0 ))s"; cat $out/parallel.log
fi
if [ -n "${E2E:-}" ]; then
  t0=$(date +%s)
  OMP_WAIT_POLICY=passive timeout 300 $build/bin/resa-bench e2e $E2E > $out/e2e.jsonl 2> $out/e2e.log
  echo "resa-bench e2e rc=$? $(( $(date +%s) - t0 ))s"
  grep -E "error|skipped" $out/e2e.jsonl | head -5; tail -40 $out/e2e.log
fi
