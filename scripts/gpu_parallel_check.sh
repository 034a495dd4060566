#!/usr/bin/env bash
# TP x SP ranks on GPUs as a user starts them: `mpirun -np N resa-worker --device cuda --tp T
# --sp S` against one rank (-np 1) on the same model and prompt, greedy, ReSA and dense. On a
# machine with one GPU the ranks share it, so the model's collectives go over MPI through pinned
# host memory (--gpu-comm mpi; with one GPU per rank `auto` picks NCCL, GPUS=N lets the script
# say so). Checks: every grid runs to the end (exit 0) with the same number of tokens; the
# generated ids and every sparse selection (layer, KV head, occurrence) are compared with one
# rank's and the agreement is printed (random-weight models have near-tied logits, where fp32
# reordering of TP sums / SP merges may pick another token: cuda_distributed_test checks the
# tie-aware equality); and a bad grid fails with a message.
#   usage: [GRIDS="1 2,2 1,2 2"] [TOKENS=40] [GPU_COMM=mpi] \
#            scripts/gpu_parallel_check.sh BUILD_DIR MODEL OUT_DIR
# GRIDS: the "TP SP" grids to run, comma-separated (default all three).
set -uo pipefail
bin="$1/bin"; model="$2"; out="$3"
mkdir -p "$out"
failed=0
check() {  # check NAME CONDITION...
  local name="$1"; shift
  if "$@"; then echo "ok   $name"; else echo "FAIL $name"; failed=1; return 1; fi
}
# ~1,500 prompt tokens: ~95 blocks, so ReSA steps read 10% of them.
python3 -c "print(' '.join(['The quick brown fox jumps over the lazy dog number %d.' % i for i in range(120)]), end='')" \
  > "$out/prompt.txt"
n=${TOKENS:-40}
comm=${GPU_COMM:-mpi}
mpi=(mpirun --allow-run-as-root --oversubscribe --bind-to none)
common=(-m "$model" --device cuda -f "$out/prompt.txt" -n "$n" --ctx 4096 --temperature 0
        --min-blocks 4 --sparse-ratio 0.1 --prefill-chunk 512)

# Identical leading tokens of two --tokens-out files.
same_prefix() { python3 - "$1" "$2" <<'EOF'
import sys
a, b = (open(p).read().split() for p in sys.argv[1:3])
k = 0
while k < min(len(a), len(b)) and a[k] == b[k]:
    k += 1
print(k, len(a), len(b))
EOF
}
# Selection lines (all TP files together) equal between two prefixes: "same total".
same_selections() { python3 - "$1" "$2" <<'EOF'
import glob, sys
def load(prefix):
    lines = {}
    for f in glob.glob(prefix + ".tp*"):
        for line in open(f):
            key, _, blocks = line.partition(":")
            lines[key] = blocks
    return lines
a, b = load(sys.argv[1]), load(sys.argv[2])
print(sum(1 for k in a if b.get(k) == a[k]), len(a))
EOF
}

for mode in resa dense; do
  "${mpi[@]}" -np 1 "$bin/resa-worker" "${common[@]}" --mode $mode \
    --tokens-out "$out/np1_$mode.ids" --selections-out "$out/np1_$mode.sel" \
    > "$out/np1_$mode.txt" 2> "$out/np1_$mode.err"
  check "-np 1 --mode $mode" test $? -eq 0
done

IFS=, read -r -a grids <<< "${GRIDS:-1 2,2 1,2 2}"
for grid in "${grids[@]}"; do
  set -- $grid
  tp=$1; sp=$2; np=$(( tp * sp ))
  for mode in resa dense; do
    name="np$np-tp$tp-sp$sp-$mode"
    start=$(date +%s.%N)
    "${mpi[@]}" -np $np "$bin/resa-worker" "${common[@]}" --mode $mode --tp $tp --sp $sp \
      --gpu-comm "$comm" --tokens-out "$out/$name.ids" --selections-out "$out/$name.sel" \
      > "$out/$name.txt" 2> "$out/$name.err"
    rc=$?
    check "$name: exit 0 ($(python3 -c "print(round($(date +%s.%N) - $start, 1))") s)" test $rc -eq 0 ||
      { tail -5 "$out/$name.err"; continue; }
    read -r same len_grid len_one < <(same_prefix "$out/$name.ids" "$out/np1_$mode.ids")
    check "$name: $len_grid tokens like -np 1" test "$len_grid" -eq "$len_one"
    echo "     $name: first $same of $len_one generated ids identical to -np 1"
    if [ $mode = resa ]; then
      read -r s t < <(same_selections "$out/$name.sel" "$out/np1_$mode.sel")
      echo "     $name: $s of $t sparse selections identical to -np 1"
    fi
    grep -hE "rank 0:|^\[stats\]|^\[resa\]" "$out/$name.err" | sed 's/^/     /'
  done
done

# A GPU worker group behind a coordinator (gRPC builds): --sp 2 ranks serve a streamed request.
if [ -x "$bin/resa-coordinator" ] && [ -x "$bin/resa-client" ]; then
  addr=127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$bin/resa-coordinator" --model "$model" --listen "$addr" > "$out/coordinator.log" 2>&1 &
  coordinator=$!
  "${mpi[@]}" -np 2 "$bin/resa-worker" -m "$model" --device cuda --sp 2 --gpu-comm "$comm" \
    --coordinator "$addr" --ctx 4096 --max-batch 4 > "$out/group.log" 2>&1 &
  group=$!
  deadline=$(( $(date +%s) + 240 ))
  until "$bin/resa-client" --server "$addr" health >/dev/null 2>&1 || [ "$(date +%s)" -gt $deadline ]; do
    sleep 2
  done
  "$bin/resa-client" --server "$addr" generate -p "$(cat "$out/prompt.txt")" -n "$n" --mode resa \
    --temperature 0 --min-blocks 4 --sparse-ratio 0.1 > "$out/group_generate.txt" 2> "$out/group_generate.err"
  check "coordinator + mpirun -np 2 resa-worker --device cuda --sp 2: generate" test $? -eq 0
  echo "     served text identical to the -np 2 --sp 2 worker's: $(cmp -s <(head -c 200 "$out/group_generate.txt") <(head -c 200 "$out/np2-tp1-sp2-resa.txt") && echo yes || echo no)"
  kill -TERM $coordinator; wait $coordinator
  check "  ... coordinator drains and exits 0 on SIGTERM" test $? -eq 0
  timeout 60 tail --pid=$group -f /dev/null; wait $group
  check "  ... the GPU worker group exits 0 after the coordinator's shutdown" test $? -eq 0
fi

# A lost GPU rank ends the job in bounded time (tests/mpi/worker_fault_check.sh: SIGKILL within
# 30 s; SIGSTOP, a hung rank, through the collectives' 8 s timeout within 28 s).
for fault in kill stop; do
  RESA_FAULT_MODEL="$model" RESA_FAULT_FLAGS="--device cuda --gpu-comm $comm" \
    sh tests/mpi/worker_fault_check.sh $fault 1 2 8 "$bin/resa-worker" "$out/prompt.txt" \
    "${mpi[@]}" > "$out/fault_$fault.txt" 2>&1
  check "GPU ranks (1 x 2): $fault of the last rank ends the job" test $? -eq 0
  grep -E "^(np|job ended|saw|FAIL)" "$out/fault_$fault.txt" | sed 's/^/     /'
done

# Bad grids fail with a message naming the flags, on every rank, not a hang or a crash.
"${mpi[@]}" -np 2 "$bin/resa-worker" "${common[@]}" --tp 2 --sp 2 > "$out/bad_grid.txt" 2>&1
check "-np 2 --tp 2 --sp 2 is refused" test $? -ne 0
check "  ... with a message naming mpirun -np" grep -q "mpirun -np" "$out/bad_grid.txt"
exit $failed
