#!/bin/sh
# N ranks equal one rank, end to end: resa-worker on the default model (SmolLM2-135M) with a
# ~665-token prompt generates greedily in MODE on one rank, then under mpirun on the grids
# (tp, sp) = (1,2) (2,1) (1,4) (2,2); every run must produce the same tokens and, in the sparse
# modes, the same selected blocks at every step, layer and KV head (--selections-out).
# Exit 77 (ctest: skipped) when the model is not in the cache.
#
# usage: worker_check.sh MODE WORKER PROMPT_FILE MPIEXEC [MPI FLAGS...]
set -u
mode=$1 worker=$2 prompt=$3
shift 3
model="${XDG_CACHE_HOME:-$HOME/.cache}/resa/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$model" ]; then
  echo "SKIP: $model is absent (fetch it with ./scripts/fetch_model.sh)"
  exit 77
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# 16 tokens, rectified every 8; --min-blocks 4 keeps 4 of the prompt's 42 blocks per step.
args="--model $model --prompt-file $prompt -n 16 --mode $mode --min-blocks 4 --rectify-every 8
      --threads 1 --quiet --timeout 120"

mpi="$*"  # mpirun and its flags (no spaces inside one flag)

run() {  # name tp sp [launcher...]
  name=$1 tp=$2 sp=$3
  shift 3
  start=$(date +%s)
  if ! "$@" $worker $args --tp $tp --sp $sp --tokens-out "$dir/$name.tokens" \
       --selections-out "$dir/$name.sel" > "$dir/$name.log" 2>&1; then
    echo "FAIL: $name exited with an error:"
    cat "$dir/$name.log"
    exit 1
  fi
  cat "$dir/$name".sel.tp* | sort > "$dir/$name.selections"
  echo "$name: $(wc -w < "$dir/$name.tokens") tokens, $(wc -l < "$dir/$name.selections")" \
       "selections, $(( $(date +%s) - start ))s"
}

run single 1 1
echo "  tokens: $(cat "$dir/single.tokens")"
if [ "$mode" != dense ] && [ ! -s "$dir/single.selections" ]; then
  echo "FAIL: no sparse selection happened in $mode mode"
  exit 1
fi
status=0
for grid in "1 2" "2 1" "1 4" "2 2"; do
  set -- $grid
  name="tp$1_sp$2"
  run "$name" $1 $2 $mpi -np $(($1 * $2))
  if ! cmp -s "$dir/single.tokens" "$dir/$name.tokens"; then
    echo "FAIL: $name generated other tokens: $(cat "$dir/$name.tokens")"
    status=1
  fi
  if ! cmp -s "$dir/single.selections" "$dir/$name.selections"; then
    echo "FAIL: $name selected other blocks (first differences):"
    diff "$dir/single.selections" "$dir/$name.selections" | head -6
    status=1
  fi
done
[ $status = 0 ] && echo "PASS: $mode: every grid matches one rank"
exit $status
