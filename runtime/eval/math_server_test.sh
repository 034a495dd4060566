#!/usr/bin/env bash
# `resa-eval math --server`: through a `resa serve` coordinator on the default model, the same
# generations as in process (greedy and sampled with the same seeds), and the same graded records.
set -uo pipefail
eval_bin=$1 resa_bin=$2 work=$3
model="${XDG_CACHE_HOME:-$HOME/.cache}/resa/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$model" ]; then echo "SKIPPED: $model not found (./scripts/fetch_model.sh)"; exit 77; fi
rm -rf "$work"; mkdir -p "$work/data/gsm8k"
cat >"$work/data/gsm8k/test.jsonl" <<'JSONL'
{"question":"Tom has 3 apples and buys 4 more. How many apples does he have?","answer":"#### 7","idx":0}
{"question":"A box holds 6 eggs. How many eggs are in 2 boxes?","answer":"#### 12","idx":1}
JSONL
port=$((20000 + $$ % 20000))
"$resa_bin" serve --model default --listen "127.0.0.1:$port" --threads 2 >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 120); do
  grep -q "registered with the coordinator" "$work/server.log" && break
  kill -0 $server 2>/dev/null || { echo "FAIL: server exited: $(tail -3 "$work/server.log")"; exit 1; }
  sleep 0.5
done
fails=0
common=(--data "$work/data" --datasets gsm8k -n 12 --modes dense,sparse,resa --min-blocks 1
        --batch 3 -q)
for setting in "greedy:--temperature 0" "sampled:--temperature 0.6 --seed 5"; do
  name=${setting%%:*}; flags=${setting#*:}
  # shellcheck disable=SC2086
  "$eval_bin" math --server "127.0.0.1:$port" "${common[@]}" $flags --out "$work/srv-$name" >/dev/null 2>"$work/srv-$name.err" \
    || { echo "FAIL $name: server run: $(tail -2 "$work/srv-$name.err")"; fails=$((fails + 1)); continue; }
  # shellcheck disable=SC2086
  "$eval_bin" math --model default "${common[@]}" $flags --out "$work/local-$name" >/dev/null 2>&1
  for mode in dense sparse resa; do
    fields() { grep -oE '"(index|output|pred|correct|generated_tokens|blocks_read)":("([^"\\]|\\.)*"|[0-9a-z]+)' "$1" | paste -d' ' - - - - - - | sort; }
    a=$(fields "$work/srv-$name/gsm8k.$mode.jsonl"); b=$(fields "$work/local-$name/gsm8k.$mode.jsonl")
    if [ -n "$a" ] && [ "$a" = "$b" ]; then echo "ok   $name $mode: server = in-process"
    else echo "FAIL $name $mode:"; diff <(echo "$a") <(echo "$b") | head -6; fails=$((fails + 1)); fi
  done
done
[ $fails -eq 0 ] && echo "all passed"
[ $fails -eq 0 ]
