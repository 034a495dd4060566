#!/usr/bin/env bash
# resa-make-model end to end: write the tiny shape, run `resa generate` on it (CPU), shard it,
# and check that bad input exits non-zero (2 for bad arguments) with a message naming the
# problem and never crashes.
set -uo pipefail
make_model=$1 resa=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
fails=0 passed=0

ok() { echo "ok   $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1"; fails=$((fails + 1)); }

expect_error() {  # name, expected exit code, expected message fragment, command...
  local name=$1 want_rc=$2 want=$3
  shift 3
  local out rc
  out=$("$@" 2>&1 </dev/null)
  rc=$?
  if [ $rc -ne "$want_rc" ]; then
    fail "$name: exit code $rc, expected $want_rc"; echo "$out" | tail -3; return
  fi
  if ! grep -qF -- "$want" <<<"$out"; then
    fail "$name: message lacks '$want':"; echo "$out" | tail -3; return
  fi
  ok "$name: $(grep -F -- "$want" <<<"$out" | head -1 | cut -c1-150)"
}

if "$make_model" --shape tiny --out "$work/tiny" 2>"$work/write.log"; then
  ok "write tiny"
else
  fail "write tiny"; cat "$work/write.log"
fi
grep -q "wrote $work/tiny" "$work/write.log" && ok "summary line" || fail "summary line"
out=$("$resa" generate -m "$work/tiny" -p "hello" -n 8 -t 2 2>&1)
rc=$?
if [ $rc -eq 0 ] && grep -q "decode .* tok/s (8 tokens)" <<<"$out"; then
  ok "resa generate: $(grep -o 'decode .* tok/s (8 tokens)' <<<"$out")"
else
  fail "resa generate (exit $rc)"; echo "$out" | tail -5
fi

"$make_model" --shape tiny --out "$work/sharded" --shard-gb 0.0004 -q
if [ -f "$work/sharded/model.safetensors.index.json" ] && [ -f "$work/sharded/model-00001-of-00004.safetensors" ] &&
   "$resa" generate -m "$work/sharded" -p "hello" -n 4 -q >/dev/null 2>&1; then
  ok "sharded write loads and generates"
else
  fail "sharded write"; ls "$work/sharded"
fi

expect_error unknown-shape 2 "known: r1-distill-qwen-1.5b" "$make_model" --shape llama-70b --out "$work/x"
expect_error missing-out 2 "--out are required" "$make_model" --shape tiny
expect_error bad-dtype 2 "--dtype" "$make_model" --shape tiny --out "$work/x" --dtype int4
expect_error bad-shard-gb 2 "--shard-gb" "$make_model" --shape tiny --out "$work/x" --shard-gb 0
expect_error not-empty 2 "--force" "$make_model" --shape tiny --out "$work/tiny"
touch "$work/afile"
expect_error out-is-file 1 "not a directory" "$make_model" --shape tiny --out "$work/afile"
expect_error out-under-file 1 "afile" "$make_model" --shape tiny --out "$work/afile/m"
expect_error unknown-flag 2 "--bogus" "$make_model" --bogus
[ -e "$work/x" ] && fail "a failed run left $work/x" || ok "failed runs left no --out"
if "$make_model" --shape tiny --out "$work/tiny" --force -q --seed 7; then ok "--force replaces"; else fail "--force"; fi
ls "$work" | grep -q partial && fail "a .partial was left in $work" || ok "no .partial left"
"$make_model" --list-shapes | grep -q "r1-distill-qwen-7b .* 28 layers, hidden  3584" && ok "--list-shapes" || fail "--list-shapes"

echo "$passed passed, $fails failed"
[ $fails -eq 0 ]
