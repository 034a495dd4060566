#!/usr/bin/env bash
# Installs the Debian packages resa builds against (skipped when already present) and, with
# --python, a virtual environment with the Python test tools (numpy, gguf, tokenizers; grpcio,
# grpcio-tools, grpcio-reflection and protobuf for the independent gRPC client of tests/serving).
set -euo pipefail
source "$(dirname "$0")/common.sh"

packages=(build-essential cmake ninja-build pkg-config git ca-certificates python3 python3-venv
  unzip libabsl-dev libpcre2-dev libutf8proc-dev libopenblas-dev libcli11-dev libspdlog-dev
  nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev clang libopenmpi-dev openmpi-bin
  libopenblas-openmp-dev gnuplot-nox libgrpc++-dev libprotobuf-dev protobuf-compiler
  protobuf-compiler-grpc prometheus-cpp-dev ccache slurmctld slurmd slurm-client munge)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

if [ "${1:-}" = "--python" ]; then
  ensure_venv
  if ! "$RESA_VENV/bin/python" -c 'import numpy, gguf, tokenizers, grpc, grpc_tools, grpc_reflection, google.protobuf' 2>/dev/null; then
    log "installing the Python test tools into $RESA_VENV"
    "$RESA_VENV/bin/pip" install -q --disable-pip-version-check \
      'numpy>=1.26,<3' 'gguf==0.19.0' 'tokenizers==0.23.3' \
      'grpcio==1.76.0' 'grpcio-tools==1.76.0' 'grpcio-reflection==1.76.0' 'protobuf==6.33.6'
  fi
fi
