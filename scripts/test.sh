#!/usr/bin/env bash
# Installs what the tests need, builds with tests, and runs the whole suite with ctest, printing
# each test's result. Then builds the libFuzzer targets with clang and runs each briefly on its
# seed corpus. CI (.ci/run) calls exactly this script.
set -euo pipefail
source "$(dirname "$0")/common.sh"
"$RESA_ROOT/scripts/install_deps.sh" --python
"$RESA_ROOT/scripts/fetch_model.sh"
build="${RESA_BUILD_DIR:-$RESA_ROOT/build}"
RESA_BUILD_DIR="$build" "$RESA_ROOT/scripts/build.sh" -DRESA_BUILD_TESTS=ON \
  -DRESA_PYTHON="$RESA_VENV/bin/python"
log "running the test suite"
ctest --test-dir "$build" --output-on-failure -j "$RESA_JOBS" --timeout 1200 "$@"

fuzz="$RESA_ROOT/build-fuzz"
log "building the fuzz targets (clang, libFuzzer) in $fuzz"
if [ ! -f "$fuzz/build.ninja" ]; then
  CC=clang CXX=clang++ cmake -S "$RESA_ROOT" -B "$fuzz" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DRESA_FUZZ=ON -DRESA_CUDA=OFF -DRESA_MPI=OFF -DRESA_GRPC=OFF -DRESA_BUILD_BENCH=OFF \
    -DRESA_NATIVE=OFF >/dev/null
fi
cmake --build "$fuzz" -j "$RESA_JOBS" --target resa_fuzzers
ctest --test-dir "$fuzz" --output-on-failure -L fuzz
