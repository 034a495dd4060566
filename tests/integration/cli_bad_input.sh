#!/usr/bin/env bash
# `resa generate` on bad input: every case must exit non-zero with a message naming the
# file/field/flag, and never crash (exit code >= 128 would be a signal).
set -uo pipefail
resa=$1 work=$2
mkdir -p "$work"
model="${XDG_CACHE_HOME:-$HOME/.cache}/resa/models/SmolLM2-135M-Instruct.Q4_1.gguf"
fails=0 passed=0

expect_error() {  # name, expected message fragment, command...
  local name=$1 want=$2
  shift 2
  local out rc
  out=$("$@" 2>&1 </dev/null)
  rc=$?
  if [ $rc -eq 0 ] || [ $rc -ge 128 ]; then
    echo "FAIL $name: exit code $rc"; echo "$out" | tail -3; fails=$((fails + 1)); return
  fi
  if ! grep -qF -- "$want" <<<"$out"; then
    echo "FAIL $name: message lacks '$want':"; echo "$out" | tail -3; fails=$((fails + 1)); return
  fi
  echo "ok   $name: $(grep -F -- "$want" <<<"$out" | head -1 | cut -c1-150)"
  passed=$((passed + 1))
}

expect_error missing-file "no-such.gguf" "$resa" generate --model "$work/no-such.gguf" -p hi
printf 'NOPE0000000000000000000000000000' >"$work/bad-magic.gguf"
expect_error wrong-magic "magic" "$resa" generate --model "$work/bad-magic.gguf" -p hi
: >"$work/empty.gguf"
expect_error empty-file "empty.gguf" "$resa" generate --model "$work/empty.gguf" -p hi
expect_error bad-temperature "--temperature" "$resa" generate --model "$work/x.gguf" -p hi --temperature -1
expect_error bad-top-p "--top-p" "$resa" generate --model "$work/x.gguf" -p hi --top-p 1.5
expect_error no-prompt "prompt" "$resa" generate --model "$work/x.gguf"
expect_error unknown-flag "--bogus" "$resa" generate --bogus
# Checked before the model is looked up or loaded: these fail the same with or without a model.
expect_error missing-prompt-file "nothere.txt" "$resa" generate --prompt-file "$work/nothere.txt"
: >"$work/empty-prompt.txt"
expect_error empty-prompt-file "is empty" "$resa" generate --model "$work/x.gguf" \
  --prompt-file "$work/empty-prompt.txt"
expect_error bad-device "--device: tpu not in" "$resa" generate --model "$work/x.gguf" \
  -p hi --device tpu
expect_error bad-mode "--mode: fast not in" "$resa" generate \
  --model "$work/x.gguf" -p hi --mode fast
expect_error bad-sparse-ratio "--sparse-ratio" "$resa" generate --model "$work/x.gguf" -p hi \
  --sparse-ratio 0
if [ -f "$model" ]; then
  head -c 5000000 "$model" >"$work/truncated.gguf"
  expect_error truncated "truncated.gguf" "$resa" generate --model "$work/truncated.gguf" -p hi
  head -c 200 "$model" >"$work/truncated-header.gguf"
  expect_error truncated-header "truncated-header.gguf" "$resa" generate --model "$work/truncated-header.gguf" -p hi
  long=$(printf 'word %.0s' $(seq 1 300))
  expect_error prompt-too-long "--ctx" "$resa" generate --model "$model" -p "$long" --ctx 64 -q
  printf 'abc\xff\xfedef' >"$work/invalid-utf8.txt"
  expect_error invalid-utf8 "UTF-8" "$resa" generate --model "$model" --prompt-file "$work/invalid-utf8.txt" -q
else
  echo "note: default model absent; model-dependent cases not run (./scripts/fetch_model.sh)"
fi
echo "$passed passed, $fails failed"
[ $fails -eq 0 ]
