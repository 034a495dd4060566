# Shared by the launch tests (sourced, not run): results, free ports, leftover checks.
# shellcheck shell=bash disable=SC2034  # exit_status, mpirun_flags: read by the scripts that source this

passed=0 failed=0
ok() { echo "ok   $1${2:+: $2}"; passed=$((passed + 1)); }
fail() { echo "FAIL $1${2:+: $2}"; failed=$((failed + 1)); }
note() { echo "note $*"; }
finish() {
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}

default_model() { echo "${XDG_CACHE_HOME:-$HOME/.cache}/resa/models/SmolLM2-135M-Instruct.Q4_1.gguf"; }

# Sets `model` to the default model, or exits 77 (ctest: skipped) saying what is missing;
# with "mpirun" (not "no-mpirun"), mpirun must be installed too.
require_model() {
  model=$(default_model)
  [ -f "$model" ] || { echo "SKIPPED: default model not found at $model (run ./scripts/fetch_model.sh)"; exit 77; }
  if [ "${1:-}" = mpirun ]; then
    command -v mpirun >/dev/null || { echo "SKIPPED: mpirun not installed (openmpi-bin)"; exit 77; }
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Open MPI in containers (README "Distributed inference"); as environment, so both mpirun and
# ranks started by srun pick it up.
export OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMP_WAIT_POLICY=passive
mpirun_flags="--oversubscribe --mca btl self,vader --mca btl_vader_single_copy_mechanism none"
[ "$(id -u)" -ne 0 ] || mpirun_flags="$mpirun_flags --allow-run-as-root"

# PIDs of live processes whose environment carries RESA_LAUNCH_ID=$1 (every process a launch
# starts has it: the coordinator, mpirun/srun, orted, every rank).
launch_pids() {
  local f pid
  for f in /proc/[0-9]*/environ; do
    pid=${f#/proc/}
    pid=${pid%/environ}
    [ "$pid" != "$$" ] || continue
    if tr '\0' '\n' 2>/dev/null <"$f" | grep -qx "RESA_LAUNCH_ID=$1"; then
      # zombies are gone already for our purposes
      [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] || echo "$pid"
    fi
  done
}

# Leftovers of one launch: processes with its id, and resa-worker/resa-coordinator processes
# whose command line names its port (pgrep). Waits up to $3 seconds for them to go.
# usage: check_no_leftovers NAME LAUNCH_ID PORT [SECONDS]
check_no_leftovers() {
  local name=$1 id=$2 port=$3 wait_s=${4:-10} left="" deadline
  deadline=$((SECONDS + wait_s))
  while true; do
    left="$(launch_pids "$id" | tr '\n' ' ')$(pgrep -f "resa-(worker|coordinator) .*:$port( |$)" | tr '\n' ' ' || true)"
    if [ -z "${left// /}" ] || [ $SECONDS -ge $deadline ]; then break; fi
    sleep 0.5
  done
  if [ -z "${left// /}" ]; then
    ok "$name" "no resa-worker/resa-coordinator or other process of the launch left"
  else
    local p
    fail "$name" "processes left: $left"
    for p in $left; do ps -o pid=,ppid=,args= -p "$p" 2>/dev/null | cut -c1-160 | sed 's/^/     /'; done
    # shellcheck disable=SC2086  # a list of PIDs
    kill -KILL $left 2>/dev/null || true
  fi
}

# Waits until FILE exists or PID exits or SECONDS pass; 0 iff the file appeared.
wait_for_file() {
  local file=$1 pid=$2 deadline=$((SECONDS + $3))
  while [ ! -s "$file" ]; do
    kill -0 "$pid" 2>/dev/null || return 1
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.5
  done
}

# Waits up to SECONDS for PID (a child of this shell) to exit; sets exit_status (124: timeout).
# Not in $(...): a subshell cannot wait for its parent's children.
exit_status=0
wait_exit() {
  local pid=$1 deadline=$((SECONDS + $2))
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    exit_status=124
    return 0
  fi
  exit_status=0
  wait "$pid" 2>/dev/null || exit_status=$?
}
