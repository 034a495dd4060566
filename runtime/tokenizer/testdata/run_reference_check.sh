#!/bin/sh
# ctest driver for tokenizer_hf_reference: make_reference.py writes Hugging Face reference ids
# into WORKDIR, resa_tokenizer_check compares. Exit 77 (skip) without a Python or the model.
# Usage: run_reference_check.sh PYTHON CHECKER WORKDIR
python="$1"
checker="$2"
work="$3"
here=$(dirname "$0")
model="${XDG_CACHE_HOME:-$HOME/.cache}/resa/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -z "$python" ]; then
  echo "SKIP: RESA_PYTHON is not set (configure with -DRESA_PYTHON=/path/to/python that has" \
       "the tokenizers, gguf and numpy packages)"
  exit 77
fi
if [ ! -f "$model" ]; then
  echo "SKIP: the default model is not at $model"
  exit 77
fi
"$python" "$here/make_reference.py" --gguf "$model" --out-dir "$work" || exit $?
exec "$checker" "$work/manifest.json"
