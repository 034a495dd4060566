#!/bin/sh
# A rank of a resa-worker job fails mid-generation; the job must end, with an error naming what
# failed, within a bound, and leave no process behind.
#
#   kill: SIGKILL the last rank once rank 0 streams generated text. Every process of the job must
#         be gone within 30 s of the kill, with a non-zero exit and a message naming the lost
#         rank: our own ("resa-worker: rank R on HOST: error: ... rank N ...") if a survivor
#         reports it, else mpirun's ("process rank N with PID P on node H exited on signal 9").
#         The check prints which of the two it saw.
#   stop: SIGSTOP the last rank instead (a hung rank). The survivors must fail with the
#         communicator's timeout (resa-worker --timeout TIMEOUT_S): "resa-worker: rank R on HOST:
#         error: mpi '<group>' rank r/n (world rank R) on host H: <Operation>(...): MPI_I... did
#         not complete within <TIMEOUT_S>s", and every process must be gone within
#         TIMEOUT_S + 20 s of the stop.
# Open MPI's mpirun puts each rank in a process group of its own, so the check records the pids
# of mpirun and of its children (the ranks) as soon as they exist; the exit trap resumes and
# kills exactly those, whatever happened.
# Exit 77 (ctest: skipped) when the default model is not in the cache.
# RESA_FAULT_MODEL names another model, RESA_FAULT_FLAGS adds worker flags (GPU ranks:
# "--device cuda --gpu-comm mpi", scripts/gpu_parallel_check.sh).
#
# usage: worker_fault_check.sh kill|stop TP SP TIMEOUT_S WORKER PROMPT_FILE MPIEXEC [MPI FLAGS...]
set -u
fault=$1 tp=$2 sp=$3 timeout=$4 worker=$5 prompt=$6
shift 6
case $fault in kill | stop) ;; *) echo "usage: $0 kill|stop TP SP TIMEOUT_S WORKER PROMPT MPIEXEC..."; exit 2 ;; esac
model="${RESA_FAULT_MODEL:-${XDG_CACHE_HOME:-$HOME/.cache}/resa/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
if [ ! -e "$model" ]; then
  echo "SKIP: $model is absent (fetch it with ./scripts/fetch_model.sh)"
  exit 77
fi
np=$((tp * sp))
victim=$((np - 1))
if [ "$fault" = kill ]; then bound=30; else bound=$((timeout + 20)); fi

dir=$(mktemp -d)
job=""
ranks=""
cleanup() {
  for p in $job $ranks; do
    kill -s CONT "$p" 2>/dev/null
    kill -s KILL "$p" 2>/dev/null
  done
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 2' INT TERM HUP

# The pids among $job $ranks that still run (zombies do not count: in a container nothing may
# reap the orphaned ones).
running() {  # pid
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)
  [ -n "$state" ] && [ "$state" != Z ]
}
alive() {
  for p in $job $ranks; do
    if running "$p"; then printf '%s ' "$p"; fi
  done
}
fail() {
  echo "FAIL: $*"
  echo "--- stdout"; cat "$dir/out"
  echo "--- stderr"; cat "$dir/err"
  exit 1
}

# Greedy ReSA generation of up to 2000 tokens after a ~665-token prompt: minutes of work, so the
# fault always lands mid-job.
"$@" -np $np "$worker" --model "$model" --prompt-file "$prompt" -n 2000 --ctx 4096 \
  --mode resa --threads 1 --timeout "$timeout" --tp "$tp" --sp "$sp" ${RESA_FAULT_FLAGS:-} \
  > "$dir/out" 2> "$dir/err" &
job=$!  # mpirun

# The ranks: mpirun's children, all $np of them; the victim is the one whose environment says it
# is world rank $victim.
vpid=""
started=""
waited=0
while [ $waited -lt 600 ]; do
  running "$job" || fail "the job ended before the fault was injected"
  if [ -z "$vpid" ]; then
    ranks=$(ps -eo pid=,ppid= | awk -v j="$job" '$2 == j { printf "%s ", $1 }')
    if [ "$(echo $ranks | wc -w)" -eq "$np" ]; then
      for p in $ranks; do
        if tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null |
           grep -qx "OMPI_COMM_WORLD_RANK=$victim"; then
          vpid=$p
        fi
      done
    fi
  fi
  # Generated text: rank 0's stdout past the per-rank "[resa-worker] rank ..." start lines.
  if [ -n "$vpid" ] && [ "$(grep -v '^\[resa-worker\]' "$dir/out" | wc -c)" -gt 0 ]; then
    started=1
    break
  fi
  sleep 0.2
  waited=$((waited + 1))
done
[ -n "$started" ] || fail "generation did not start within 120 s"
echo "np $np (tp $tp x sp $sp): generation started; sending SIG$(echo $fault | tr a-z A-Z)" \
     "to rank $victim (pid $vpid)"

start=$(date +%s)
if [ "$fault" = kill ]; then kill -s KILL "$vpid"; else kill -s STOP "$vpid"; fi
while running "$job" && [ $(($(date +%s) - start)) -le $((bound + 5)) ]; do
  sleep 0.2
done
if running "$job"; then
  fail "mpirun still runs $((bound + 5)) s after the fault (processes: $(alive))"
fi
wait "$job"
rc=$?
# mpirun is gone; its ranks must be too (give them a moment to exit).
left=$(alive)
[ -z "$left" ] || { sleep 1; left=$(alive); }
took=$(($(date +%s) - start))
echo "job ended after ${took}s (bound ${bound}s) with exit status $rc"
[ -z "$left" ] || fail "processes of the job survive mpirun (pids $left)"
[ "$rc" -ne 0 ] || fail "the job exited 0 although rank $victim was lost"
[ "$took" -le "$bound" ] || fail "the job took ${took}s to end, more than ${bound}s"

if [ "$fault" = kill ]; then
  ours=$(grep -E "resa-worker: rank [0-9]+ on [^:]+: error: .*rank $victim([^0-9]|$)" "$dir/err" | head -1)
  theirs=$(cat "$dir/out" "$dir/err" |
           grep -E "process rank $victim with PID [0-9]+ on node .* exited on signal 9" | head -1)
  if [ -n "$ours" ]; then
    echo "saw our message: $ours"
  elif [ -n "$theirs" ]; then
    echo "saw mpirun's message (no survivor reported the loss first): $theirs"
  else
    fail "no message names the lost rank $victim"
  fi
else
  ours=$(grep -E "resa-worker: rank [0-9]+ on [^:]+: error: mpi '[a-z/0-9]+' rank [0-9]+/[0-9]+ \(world rank [0-9]+\) on host [^:]+: [A-Za-z]+\([^)]*\): MPI_I[a-z]+ did not complete within ${timeout}s" "$dir/err" | head -1)
  [ -n "$ours" ] || fail "no survivor reported the communicator timeout naming rank and operation"
  echo "saw our message: $ours"
fi
echo "PASS: $fault of rank $victim at np $np"
exit 0
