#!/usr/bin/env bash
# `resa-eval math` and `math-summary` end to end: bad input gives one-line errors naming the flag;
# on the default model (skipped when absent) a --limit 2 run writes graded JSONL per dataset and
# mode, a rerun redoes nothing, an interrupted run resumes to the same item set, and the summary
# table lists every mode.
set -uo pipefail
eval_bin=$1 work=$2
rm -rf "$work"; mkdir -p "$work/data/gsm8k" "$work/data/amc23"
cat >"$work/data/gsm8k/test.jsonl" <<'JSONL'
{"question":"Tom has 3 apples and buys 4 more. How many apples does he have?","answer":"3+4=7\n#### 7","idx":0}
{"question":"A box holds 6 eggs. How many eggs are in 2 boxes?","answer":"6*2=12\n#### 12","idx":1}
{"question":"Unused third problem: 1+1?","answer":"#### 2","idx":2}
JSONL
cat >"$work/data/amc23/test.jsonl" <<'JSONL'
{"id":0,"question":"What is $2^5$?","answer":32.0}
{"id":1,"question":"What is $10-3$?","answer":7.0}
JSONL
fails=0 passed=0
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
ok() { echo "ok   $*"; passed=$((passed + 1)); }

expect_error() {  # name, fragment the single error line must contain, args...
  local name=$1 want=$2; shift 2
  local out rc
  out=$("$eval_bin" math "$@" 2>&1 </dev/null); rc=$?
  if [ $rc -eq 0 ] || [ $rc -ge 128 ]; then fail "$name: exit code $rc"; return; fi
  if [ "$(printf '%s\n' "$out" | wc -l)" -ne 1 ]; then fail "$name: not one line: $out"; return; fi
  if ! grep -qF -- "$want" <<<"$out"; then fail "$name: message lacks '$want': $out"; return; fi
  ok "$name: $out"
}
d="$work/data"
expect_error missing-data "--data $work/nope" --data "$work/nope" --datasets gsm8k
expect_error unknown-dataset "known: minerva_math, gaokao2023en" --data "$d" --datasets gsm8k,mathqa
expect_error absent-dataset "no aime24/test.jsonl" --data "$d" --datasets aime24
expect_error bad-dataset-limit "--datasets" --data "$d" --datasets gsm8k:x
expect_error bad-mode "--modes: unknown mode 'fast'" --data "$d" --datasets gsm8k --modes dense,fast
expect_error negative-limit "--limit" --data "$d" --datasets gsm8k --limit -1
expect_error bad-batch "--batch" --data "$d" --datasets gsm8k --batch 0
expect_error bad-prompt "--prompt" --data "$d" --datasets gsm8k --prompt cot
expect_error bad-top-p "--top-p" --data "$d" --datasets gsm8k --top-p 1.5
out=$("$eval_bin" math-summary "$work/nope" 2>&1); rc=$?
if [ $rc -ne 0 ] && grep -qF "$work/nope" <<<"$out"; then ok "summary-missing-dir: $out"; else fail "summary-missing-dir: rc=$rc $out"; fi

model="${XDG_CACHE_HOME:-$HOME/.cache}/resa/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$model" ]; then
  echo "$passed passed, $fails failed; SKIPPED the model runs: $model not found (./scripts/fetch_model.sh)"
  [ $fails -eq 0 ] && exit 77 || exit 1
fi

run=("$eval_bin" math --model default --data "$d" --datasets gsm8k,amc23 --limit 2 -n 8
     --modes dense,sparse,resa --batch 4 --min-blocks 1 --threads 2)
"${run[@]}" --out "$work/out" >"$work/first.txt" 2>"$work/first.err" || { fail "first run: $(tail -3 "$work/first.err")"; }
for ds in gsm8k amc23; do
  for mode in dense sparse resa; do
    f="$work/out/$ds.$mode.jsonl"
    if [ ! -f "$f" ]; then fail "no $f"; continue; fi
    n=$(wc -l <"$f")
    [ "$n" -eq 2 ] || fail "$f has $n records, expected 2"
    for key in '"index":' '"id":' '"prompt":' '"output":' '"pred":' '"gold":' '"correct":' \
               '"generated_tokens":' '"report":' '"blocks_read":' '"rectifications":' "\"mode\":\"$mode\""; do
      [ "$(grep -c -- "$key" "$f")" -eq 2 ] || fail "$f: field $key missing"
    done
  done
done
grep -q '"gold":"32"' "$work/out/amc23.dense.jsonl" || fail "amc23 gold 32.0 not normalised to 32"
grep -q '"gold":"7"' "$work/out/gsm8k.resa.jsonl" || fail "gsm8k gold after #### not read"
grep -qE '^\| resa \|' "$work/first.txt" || fail "the run did not print the summary table: $(cat "$work/first.txt")"
grep -q 'ETA' "$work/first.err" || fail "no progress line with an ETA"
[ $fails -eq 0 ] && ok "first run: 12 graded records"

"${run[@]}" --out "$work/out" >/dev/null 2>"$work/again.err"
grep -q '0 generations to run, 12 already done' "$work/again.err" && ok "rerun redoes nothing" \
  || fail "rerun: $(grep 'generations to run' "$work/again.err")"

# Interrupted after 5 generations, then resumed: the same 12 items, each once.
"${run[@]}" --out "$work/resumed" --stop-after 5 >/dev/null 2>&1
n=$(cat "$work"/resumed/*.jsonl | wc -l)
[ "$n" -eq 5 ] || fail "--stop-after 5 wrote $n records"
"${run[@]}" --out "$work/resumed" >/dev/null 2>"$work/resume.err"
grep -q '7 generations to run, 5 already done' "$work/resume.err" || fail "resume: $(grep 'generations to run' "$work/resume.err")"
keys() { cat "$1"/*.jsonl | grep -oE '"dataset":"[a-z0-9]+"|"index":[0-9]+|"mode":"[a-z]+"' | paste -d' ' - - - | sort; }
dups=$(keys "$work/resumed" | uniq -d | wc -l)
if [ "$dups" -eq 0 ] && [ "$(keys "$work/resumed" | wc -l)" -eq 12 ]; then ok "interrupted run resumed: 12 items, none twice"; else fail "resumed set wrong (dups $dups)"; fi

# Different settings must not be mixed into the same directory.
out=$("$eval_bin" math --model default --data "$d" --datasets gsm8k --limit 1 -n 9 --out "$work/out" 2>&1); rc=$?
if [ $rc -ne 0 ] && grep -qF "max_new_tokens" <<<"$out"; then ok "settings mismatch refused"; else fail "settings mismatch: rc=$rc $out"; fi

csv=$("$eval_bin" math-summary "$work/out" --format csv 2>&1)
for mode in dense sparse resa; do
  for ds in amc23 gsm8k avg; do
    want="$mode,$ds,$([ $ds = avg ] && echo 4 || echo 2),"
    grep -q "^$want" <<<"$csv" || fail "summary csv lacks '$want': $csv"
  done
done
[ -f "$work/out/summary.md" ] && [ -f "$work/out/summary.csv" ] || fail "summary.md/csv not written"
md=$("$eval_bin" math-summary "$work/out" --format md 2>&1)
grep -q '^| mode | amc23 | gsm8k | Avg |' <<<"$md" || fail "markdown header: $md"
[ $fails -eq 0 ] && ok "summary lists every mode and dataset"

echo "$passed passed, $fails failed"
[ $fails -eq 0 ]
