#!/usr/bin/env bash
# Bad launches fail fast, name the rank and host, and leave nothing running:
#  - a grid that does not match the number of ranks (resa-launch --np; and mpirun -np 3 of
#    resa-rank in front of a tp 2 x sp 2 worker: the ranks refuse, naming themselves and the host);
#  - a coordinator address that cannot be reached (resa-launch --coordinator; and resa-worker
#    itself under resa-rank, failing within --connect-timeout);
#  - the model missing on one "node": an MPMD mpirun where ranks 2-3 see another model path, and
#    resa-launch with a model path that does not exist;
#  - usage errors of resa-launch and resa-rank;
#  - a rank killed while the group serves: the launcher stops everything and exits 1.
#
# usage: launch_bad_input.sh BIN_DIR REPO_ROOT WORK_DIR
set -euo pipefail
bin=$1 root=$2 work=$3
# shellcheck source=tests/launch/common.sh
source "$root/tests/launch/common.sh"
require_model mpirun
rm -rf "$work" && mkdir -p "$work"
unset "${!SLURM_@}" # not a Slurm test, even when ctest itself runs inside an allocation
host=$(hostname -s 2>/dev/null || hostname)
launch=$root/launch/resa-launch
rank=$root/launch/resa-rank
read -r -a mpi <<<"mpirun $mpirun_flags"
launcher_pid="" ids=()
cleanup() { # whatever is still running of this test's launches
  local i left
  [ -z "$launcher_pid" ] || kill -KILL "$launcher_pid" 2>/dev/null || true
  for i in "${ids[@]}"; do
    left=$(launch_pids "$i" | tr '\n' ' ')
    # shellcheck disable=SC2086  # a list of PIDs
    [ -z "${left// /}" ] || kill -KILL $left 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 143' TERM INT

# expect NAME MAX_SECONDS FRAGMENT... -- CMD...: CMD must exit with an error (1..127) within
# MAX_SECONDS, print every FRAGMENT, and leave no process of its launch (RESA_LAUNCH_ID) behind.
expect_fail() {
  local name=$1 max=$2 frags=() out rc t0 id port
  shift 2
  while [ "$1" != -- ]; do frags+=("$1"); shift; done
  shift
  id="bad-$$-$RANDOM"
  ids+=("$id")
  port=${expect_port:-0}
  t0=$SECONDS
  rc=0
  out=$(RESA_LAUNCH_ID=$id timeout -k 5 $((max + 30)) "$@" 2>&1 </dev/null) || rc=$?
  local took=$((SECONDS - t0))
  if [ "$rc" -eq 0 ] || [ "$rc" -ge 124 ]; then
    fail "$name" "exit status $rc (want an error exit) after ${took}s: $(tail -c 400 <<<"$out")"
  elif [ "$took" -gt "$max" ]; then
    fail "$name" "took ${took}s (limit ${max}s)"
  else
    local f missing=""
    for f in "${frags[@]}"; do grep -qF -- "$f" <<<"$out" || missing+="'$f' "; done
    if [ -n "$missing" ]; then
      fail "$name" "no $missing in: $(tail -c 600 <<<"$out")"
    else
      ok "$name" "status $rc in ${took}s: $(grep -F -- "${frags[0]}" <<<"$out" | head -1 | cut -c1-150)"
    fi
  fi
  check_no_leftovers "  ...and nothing left ($name)" "$id" "$port" 10
}

# ---- usage ---------------------------------------------------------------------------------
if "$launch" --help | grep -q -- '--tp T, --sp S'; then ok "resa-launch --help"; else fail "resa-launch --help"; fi
if "$rank" --help | grep -q -- '--check'; then ok "resa-rank --help"; else fail "resa-rank --help"; fi
expect_fail "resa-launch without --model" 5 "error: --model is required" -- "$launch" --tp 2
expect_fail "resa-launch with an unknown option" 5 "unknown option '--bogus'" -- \
  "$launch" --model "$model" --bogus 1
expect_fail "resa-rank outside mpirun/srun" 5 "no rank in the environment" -- \
  env -u OMPI_COMM_WORLD_RANK -u PMIX_RANK -u SLURM_PROCID -u PMI_RANK "$rank" -- true

# ---- grid that does not match the ranks ----------------------------------------------------
expect_fail "resa-launch: grid 2x2 with --np 3" 5 "grid tp 2 x sp 2 needs 4 ranks, but --np is 3" \
  "host $host" -- "$launch" --model "$model" --tp 2 --sp 2 --np 3 --bin-dir "$bin" \
  --log-dir "$work/grid"
expect_fail "mpirun -np 3 of a tp 2 x sp 2 worker: the ranks refuse" 30 \
  "on $host: error: grid tp 2 x sp 2 = 4 ranks, but the launcher started 3" "resa-rank: rank " -- "${mpi[@]}" -np 3 -x RESA_LAUNCH_ID "$rank" -- "$bin/resa-worker" \
  --model "$model" --tp 2 --sp 2 --coordinator 127.0.0.1:1
expect_fail "resa-worker itself: tp 3 x sp 1 on 2 ranks" 60 "rank 0 on $host: error" -- \
  "${mpi[@]}" -np 2 -x RESA_LAUNCH_ID "$bin/resa-worker" --model "$model" --tp 3 --sp 1 \
  --prompt hi -n 1 --threads 1 --quiet

# ---- coordinator that cannot be reached ----------------------------------------------------
closed=$(free_port) # bound and released: nothing listens there
expect_port=$closed expect_fail "resa-launch --coordinator 127.0.0.1:$closed (nothing listens)" 15 \
  "resa-launch: host $host: error: coordinator 127.0.0.1:$closed is not reachable from $host" -- \
  "$launch" --model "$model" --tp 2 --sp 1 --bin-dir "$bin" --coordinator "127.0.0.1:$closed" \
  --mpirun-flags "$mpirun_flags" --log-dir "$work/unreachable"
expect_port=$closed expect_fail "resa-worker rank 0 cannot reach the coordinator (--connect-timeout 3)" 60 \
  "rank 0 on $host: error" "127.0.0.1:$closed" -- "${mpi[@]}" -np 2 -x RESA_LAUNCH_ID "$rank" -- \
  "$bin/resa-worker" --model "$model" --tp 2 --sp 1 --coordinator "127.0.0.1:$closed" \
  --connect-timeout 3 --threads 1 --quiet

# ---- model missing on one node --------------------------------------------------------------
# Ranks 2 and 3 see a path that does not exist there, as on a node without the shared file system.
missing=$work/not-on-this-node/$(basename "$model")
expect_fail "model missing for ranks 2-3 (MPMD mpirun): those ranks refuse, the job ends" 30 \
  "on $host: error: model $missing not found on this host" "resa-rank: rank " -- \
  "${mpi[@]}" -x RESA_LAUNCH_ID -np 2 "$rank" -- "$bin/resa-worker" --model "$model" --tp 4 \
  --sp 1 --coordinator 127.0.0.1:1 : -np 2 "$rank" -- "$bin/resa-worker" --model "$missing" \
  --tp 4 --sp 1 --coordinator 127.0.0.1:1
expect_fail "resa-launch with a model path that does not exist" 5 \
  "resa-launch: host $host: error: model $missing not found on this host" -- \
  "$launch" --model "$missing" --tp 2 --sp 2 --bin-dir "$bin"

# ---- a rank that dies while serving ----------------------------------------------------------
# mpirun ends the job, the launcher notices, stops the coordinator and exits 1: nothing left.
port=$(free_port)
id="bad-rank-dies-$$-$RANDOM"
ids+=("$id")
RESA_LAUNCH_ID=$id "$launch" --model "$model" --tp 1 --sp 2 --bin-dir "$bin" \
  --listen "127.0.0.1:$port" --log-dir "$work/rank-dies" --ready-file "$work/rank-dies.address" \
  --mpirun-flags "$mpirun_flags" --ready-timeout 150 --drain-timeout 2 --grace 5 \
  -- --threads 1 --ctx 256 --max-batch 1 --quiet --timeout 20 >"$work/rank-dies.out" 2>&1 &
launcher_pid=$!
if wait_for_file "$work/rank-dies.address" "$launcher_pid" 150; then
  victim=""
  for p in $(launch_pids "$id"); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = resa-worker ] && victim=$p
  done
  t0=$SECONDS
  kill -KILL "$victim"
  wait_exit "$launcher_pid" 90
  [ "$exit_status" = 124 ] || launcher_pid=""
  if [ "$exit_status" -eq 1 ] && grep -q "resa-launch: host $host: error: the worker group exited" "$work/rank-dies.out"; then
    ok "a rank killed while serving: the launcher stops everything and exits 1" \
      "in $((SECONDS - t0))s: $(grep -m1 'error: the worker group exited' "$work/rank-dies.out")"
  else
    fail "a rank killed while serving" "status $exit_status: $(tail -n 8 "$work/rank-dies.out")"
    kill -KILL "$launcher_pid" 2>/dev/null || true
  fi
else
  fail "launch for the rank-death check reaches SERVING" "$(tail -n 8 "$work/rank-dies.out")"
  kill -KILL "$launcher_pid" 2>/dev/null || true
fi
check_no_leftovers "  ...and nothing left (a rank killed while serving)" "$id" "$port" 15
finish
