#!/usr/bin/env bash
# `resa generate` end to end on the default model: greedy output is non-empty, deterministic,
# and the stats line is printed.
set -euo pipefail
resa=$1
model="${XDG_CACHE_HOME:-$HOME/.cache}/resa/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$model" ]; then
  echo "SKIPPED: default model not found at $model (run ./scripts/fetch_model.sh)"; exit 77
fi
a=$("$resa" generate --model default --chat -p "What is the capital of France?" -n 24 2>/tmp/resa_smoke_err.$$)
b=$("$resa" generate --model default --chat -p "What is the capital of France?" -n 24 -q 2>/dev/null)
grep -q '\[stats\] prompt' /tmp/resa_smoke_err.$$ || { echo "no stats line"; cat /tmp/resa_smoke_err.$$; exit 1; }
# The default mode is ReSA: its report, with the CPU backend's timed phases.
grep -q '\[resa\] blocks read .* | time: selection [0-9.]*s, sparse attention' /tmp/resa_smoke_err.$$ ||
  { echo "no ReSA report line"; cat /tmp/resa_smoke_err.$$; exit 1; }
rm -f /tmp/resa_smoke_err.$$
echo "output: $a"
[ -n "$a" ] || { echo "empty output"; exit 1; }
[ "$a" = "$b" ] || { echo "greedy output not deterministic"; exit 1; }
grep -qi "paris" <<<"$a" || { echo "expected the answer to mention Paris"; exit 1; }
echo "1 passed, 0 failed"
