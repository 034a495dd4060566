#!/usr/bin/env bash
# ctest driver: resa dumps logits, the numpy reference checks them. Exit 77 (skipped) with the
# reason when the model or the Python test environment is missing.
set -euo pipefail
dump_bin=$1 python=$2 work=$3
src_dir=$(cd "$(dirname "$0")" && pwd)
model="${XDG_CACHE_HOME:-$HOME/.cache}/resa/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$model" ]; then
  echo "SKIPPED: default model not found at $model (run ./scripts/fetch_model.sh)"; exit 77
fi
if [ -z "$python" ] || ! "$python" -c 'import numpy, gguf' 2>/dev/null; then
  echo "SKIPPED: no Python with numpy and gguf (configure with -DRESA_PYTHON=.venv/bin/python;" \
       "./scripts/test.sh sets it up)"; exit 77
fi
mkdir -p "$work"
"$dump_bin" --model "$model" --out "$work/dump.bin"
"$python" "$src_dir/llama_reference.py" "$model" "$work/dump.bin" --report "$work/report.json"
