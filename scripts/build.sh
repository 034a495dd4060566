#!/usr/bin/env bash
# Configures (once) and builds resa into build/ (Release, Ninja). Extra arguments go to CMake's
# configure step, e.g. ./scripts/build.sh -DRESA_CUDA=OFF.
set -euo pipefail
source "$(dirname "$0")/common.sh"
build="${RESA_BUILD_DIR:-$RESA_ROOT/build}"
if [ ! -f "$build/build.ninja" ] || [ $# -gt 0 ]; then
  cmake -S "$RESA_ROOT" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
fi
cmake --build "$build" -j "$RESA_JOBS"
