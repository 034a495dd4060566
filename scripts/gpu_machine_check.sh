#!/usr/bin/env bash
# Builds the whole project on a GPU machine whose image lacks some Debian -dev packages (the
# H200 image: no abseil, PCRE2, utf8proc, spdlog/fmt, CLI11, nlohmann-json, gtest/gmock or
# OpenBLAS headers), runs `ctest -L gpu` and the CPU unit tests of the kernels, engine and
# parallel layers. Carry the packages in .carry/ (ignored by git), fetched on a Debian 12 machine:
#   mkdir -p .carry && cd .carry && apt-get download libabsl-dev libabsl20220623 libpcre2-dev \
#     libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libutf8proc-dev libutf8proc2 \
#     libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 libcli11-dev nlohmann-json3-dev libgtest-dev \
#     libgmock-dev libopenblas-dev libopenblas-pthread-dev libopenblas0-pthread libopenblas0 \
#     libgfortran5 libquadmath0
# Outputs (logs) go to $OUT (default /tmp/out).
# Whole-project build on the accelerator machine (gRPC off), GPU tests, unit tests.
set -uo pipefail
source "$(dirname "$0")/gpu_carry_env.sh"
nvidia-smi -L > $out/gpu.txt 2>&1
which mpirun mpicc >> $out/gpu.txt 2>&1; ls /usr/include/nccl.h /usr/lib/x86_64-linux-gnu/libnccl* >> $out/gpu.txt 2>&1
rm -rf build-h200all
t0=$(date +%s)
cmake -S . -B build-h200all -G Ninja -DCMAKE_BUILD_TYPE=Release -DRESA_GRPC=OFF \
  -DCMAKE_CUDA_ARCHITECTURES=90a -DCMAKE_PREFIX_PATH=$deps/usr \
  -DCMAKE_LIBRARY_ARCHITECTURE=x86_64-linux-gnu > $out/configure.log 2>&1 || { tail -30 $out/configure.log; exit 1; }
grep -E "resa 0.1.0|OpenBLAS" $out/configure.log
timeout 330 cmake --build build-h200all -j16 --target kernels_cuda_test engine_cuda_test engine_test kernels_cpu_test resa \
  $(grep -q "MPI=ON" $out/configure.log && echo parallel_test) \
  $(grep -q "NCCL=ON" $out/configure.log && echo nccl_communicator_test) > $out/build.log 2>&1
echo "build rc=$? $(( $(date +%s) - t0 ))s"; grep -E "error" $out/build.log | head -20
cd build-h200all && timeout 420 ctest -L gpu --output-on-failure > $out/ctest_gpu.log 2>&1
echo "ctest gpu rc=$?"; grep -E "Test +#|tests passed|SKIPPED\]|FAILED" $out/ctest_gpu.log | head -20
timeout 60 ctest -R "engine_test|kernels_cpu_test|parallel_test" > $out/ctest_cpu.log 2>&1
echo "ctest cpu rc=$?"; grep -E "Test +#|tests passed" $out/ctest_cpu.log | head
