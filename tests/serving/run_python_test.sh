#!/usr/bin/env bash
# ctest driver of the Python serving tests: run_python_test.sh PYTHON SCRIPT ARGS...
# Uses PYTHON (the test venv, -DRESA_PYTHON) when it has grpcio, else Debian's /usr/bin/python3
# (python3-grpcio); exits 77 (skipped) with the reason when neither has it or the model is absent.
set -uo pipefail
python=$1 script=$2
shift 2
model="${XDG_CACHE_HOME:-$HOME/.cache}/resa/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$model" ]; then
  echo "SKIPPED: default model not found at $model (run ./scripts/fetch_model.sh)"; exit 77
fi
pick=""
for p in "$python" /usr/bin/python3; do
  if [ -n "$p" ] && [ -x "$p" ] && "$p" -c 'import grpc, google.protobuf' 2>/dev/null; then
    pick=$p; break
  fi
done
if [ -z "$pick" ]; then
  echo "SKIPPED: no Python with grpcio (./scripts/install_deps.sh --python, then configure with" \
       "-DRESA_PYTHON=.venv/bin/python; or apt-get install python3-grpcio)"; exit 77
fi
echo "python: $pick ($("$pick" -c 'import grpc; print("grpcio", grpc.__version__)'))"
# No __pycache__ in the source tree.
export PYTHONDONTWRITEBYTECODE=1
exec "$pick" -u "$(dirname "$0")/$script" "$@"
