#!/usr/bin/env bash
# resa-bench's list options on the command line: comma-separated lists parse (the bench then
# runs, or on a machine without a GPU stops with "no CUDA device"), and a value out of range is
# refused with a message naming the option, never a crash.
set -uo pipefail
bench=$1
fails=0 passed=0

ok() { echo "ok   $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1"; fails=$((fails + 1)); }

parses() {  # name, command...: exit 0, or the no-GPU stop; never a parse error or a signal
  local name=$1
  shift
  local out rc
  out=$("$@" 2>&1 </dev/null)
  rc=$?
  if [ $rc -ge 128 ] || grep -q -- "Run with --help" <<<"$out"; then
    fail "$name: exit code $rc"; echo "$out" | tail -3; return
  fi
  if [ $rc -ne 0 ] && ! grep -q "no CUDA device" <<<"$out"; then
    fail "$name: exit code $rc without the no-GPU message"; echo "$out" | tail -3; return
  fi
  ok "$name (exit $rc)"
}

refused() {  # name, message fragment, command...
  local name=$1 want=$2
  shift 2
  local out rc
  out=$("$@" 2>&1 </dev/null)
  rc=$?
  if [ $rc -eq 0 ] || [ $rc -ge 128 ] || ! grep -qF -- "$want" <<<"$out"; then
    fail "$name: exit code $rc, message:"; echo "$out" | tail -3; return
  fi
  ok "$name: $(grep -F -- "$want" <<<"$out" | head -1 | cut -c1-120)"
}

if "$bench" kernels --help 2>&1 | grep -q -- "--gemv-rows"; then
  parses gemv-rows-list "$bench" kernels --gemv --gemv-rows 2,8 --gemv-matrices qkv \
    --models 1.5B --gemv-iters 2
  refused gemv-rows-range "--gemv-rows" "$bench" kernels --gemv --gemv-rows 2,9
  parses kernels-l2-fetch "$bench" kernels --l2-fetch 64 --gemv --gemv-rows 1 \
    --gemv-matrices qkv --models 1.5B --gemv-iters 2
  refused kernels-l2-fetch-range "--l2-fetch" "$bench" kernels --l2-fetch 129
else
  echo "skip kernels: this resa-bench has no --gemv (built without CUDA)"
fi
parses kernels-models-shape "$bench" kernels --models 1.5B,6-1-128 --contexts 4096 --batches 1 \
  --no-sdpa --prefill-tokens 0 --iters 2
refused kernels-models-group "--models" "$bench" kernels --models 5-2-128
refused kernels-models-head-dim "--models" "$bench" kernels --models 8-2-96
refused kernels-models-name "--models" "$bench" kernels --models 1.5B,7b
refused e2e-unknown-flag "--bogus" "$bench" e2e --bogus
refused e2e-l2-fetch-range "--l2-fetch" "$bench" e2e --l2-fetch 64,200
refused e2e-top-p-range "--top-p" "$bench" e2e --top-p 1.5
refused e2e-temperature-range "--temperature" "$bench" e2e --temperature -1
parses prefill-lists "$bench" prefill --models r1-qwen-1.5b --prompts 64,96 --chunks 32,64 \
  --repeats 1 --no-profile
refused prefill-chunk-range "--chunks" "$bench" prefill --chunks 512,0
echo "$passed passed, $fails failed"
[ "$fails" -eq 0 ]
