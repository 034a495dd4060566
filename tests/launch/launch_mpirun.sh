#!/usr/bin/env bash
# launch/resa-launch under mpirun, end to end on CPU ranks: 4 ranks (tp 2 x sp 2) behind a
# coordinator on free loopback ports; checks the per-rank lines, health SERVING, a streamed
# generation through resa-client, the Prometheus metrics, then SIGTERM: the launcher drains the
# coordinator, the workers are told to shut down, it exits 0 and no process is left. Last, a
# second launch whose launcher is SIGKILLed: the parent-death signal still stops everything.
#
# usage: launch_mpirun.sh BIN_DIR REPO_ROOT WORK_DIR
# Exit 77 (ctest: skipped) when the default model or mpirun is absent.
set -euo pipefail
bin=$1 root=$2 work=$3
# shellcheck source=tests/launch/common.sh
source "$root/tests/launch/common.sh"
require_model mpirun
for b in resa-coordinator resa-worker resa-client; do
  [ -x "$bin/$b" ] || { echo "FAIL: $bin/$b is not built"; exit 1; }
done
rm -rf "$work" && mkdir -p "$work"
unset "${!SLURM_@}" # not a Slurm test, even when ctest itself runs inside an allocation

launcher_pid=""
cleanup() {
  if [ -n "$launcher_pid" ] && kill -0 "$launcher_pid" 2>/dev/null; then
    kill -TERM "$launcher_pid" 2>/dev/null || true
    sleep 5
    kill -KILL "$launcher_pid" 2>/dev/null || true
  fi
  # Whatever this test started and is still alive goes now.
  local left
  left=$(launch_pids "$launch_id" | tr '\n' ' ')
  # shellcheck disable=SC2086  # a list of PIDs
  [ -z "${left// /}" ] || kill -KILL $left 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 143' TERM INT

port=$(free_port)
mport=$(free_port)
while [ "$mport" = "$port" ]; do mport=$(free_port); done
launch_id="launch-mpirun-$$-$RANDOM"
start=$SECONDS
RESA_LAUNCH_ID=$launch_id "$root/launch/resa-launch" --model "$model" --tp 2 --sp 2 \
  --bin-dir "$bin" --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" \
  --log-dir "$work/logs" --ready-file "$work/address" --mpirun-flags "$mpirun_flags" \
  --ready-timeout 150 --drain-timeout 10 --grace 10 \
  -- --threads 1 --ctx 512 --max-batch 2 --quiet --timeout 60 >"$work/launch.out" 2>&1 &
launcher_pid=$!

if wait_for_file "$work/address" "$launcher_pid" 170; then
  ok "mpirun -np 4 through resa-launch reaches SERVING" "$(cat "$work/address") after $((SECONDS - start))s"
else
  fail "mpirun -np 4 through resa-launch reaches SERVING" "no address after $((SECONDS - start))s"
  echo "---- launch.out"; cat "$work/launch.out"
  for f in "$work"/logs/*.log; do echo "---- $f"; tail -n 30 "$f"; done
  finish
  exit 1
fi
addr=$(cat "$work/address")

# One line per rank from the launcher's environment, each rank exactly once.
lines=$(grep -c '^\[resa-launch\] rank [0-3]/4 local rank [0-3]/4 host .* (openmpi env) grid tp 2 x sp 2' "$work/launch.out" || true)
distinct=$(grep -o '^\[resa-launch\] rank [0-3]/4' "$work/launch.out" | sort -u | wc -l)
if [ "$lines" -eq 4 ] && [ "$distinct" -eq 4 ]; then
  ok "rank, local rank, world size and host printed once per rank" "$(grep -m1 '^\[resa-launch\] rank 0/4' "$work/launch.out")"
else
  fail "rank lines" "$lines lines, $distinct distinct ranks in $work/launch.out"
fi
if grep -q "^\[resa-worker\] rank 3/4 local rank 3/4" "$work/logs/workers.log"; then
  ok "the workers agree on the world" "$(grep -m1 '^\[resa-worker\] rank 3/4' "$work/logs/workers.log")"
else
  fail "the workers agree on the world" "no '[resa-worker] rank 3/4' in workers.log"
fi

if "$bin/resa-client" --server "$addr" health >/dev/null 2>&1; then
  ok "resa-client health" "SERVING"
else
  fail "resa-client health" "exit status $?"
fi

# A streamed generation: several messages, the last one with the finish reason.
if "$bin/resa-client" --server "$addr" --deadline 120 generate --prompt "The capital of France is" \
  --max-tokens 12 --temperature 0 --json >"$work/generate.jsonl" 2>"$work/generate.err"; then
  messages=$(grep -c . "$work/generate.jsonl" || true)
  text=$(python3 -c 'import json,sys
print("".join(json.loads(l).get("text","") for l in open(sys.argv[1]) if l.strip()))' "$work/generate.jsonl" 2>/dev/null || true)
  if [ "$messages" -ge 3 ] && grep -qi 'finish' "$work/generate.jsonl"; then
    ok "streamed generation through the 4-rank group" "$messages messages, text: $(tr '\n' ' ' <<<"$text" | cut -c1-80)"
  else
    fail "streamed generation" "$messages messages: $(head -c 400 "$work/generate.jsonl")"
  fi
else
  fail "streamed generation" "resa-client failed: $(tail -c 400 "$work/generate.err")"
fi

# Metrics: the coordinator counted what it generated.
metrics=$(python3 -c 'import sys, urllib.request
print(urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=10).read().decode())' "$mport" 2>&1 || true)
generated=$(awk '/^resa_generated_tokens_total/ {s += $2} END {print s + 0}' <<<"$metrics")
if awk -v g="$generated" 'BEGIN {exit !(g > 0)}'; then
  ok "Prometheus metrics on 127.0.0.1:$mport" "resa_generated_tokens_total $generated, resa_worker_ready $(awk '/^resa_worker_ready/ {print $2; exit}' <<<"$metrics")"
else
  fail "Prometheus metrics" "no resa_generated_tokens_total > 0 in: $(head -c 300 <<<"$metrics")"
fi

# SIGTERM: drain, workers told to shut down, exit 0, nothing left.
kill -TERM "$launcher_pid"
t0=$SECONDS
wait_exit "$launcher_pid" 90
rc=$exit_status
launcher_pid=""
if [ "$rc" -eq 0 ]; then
  ok "SIGTERM: the launcher exits 0" "after $((SECONDS - t0))s"
else
  fail "SIGTERM: the launcher exits 0" "status $rc after $((SECONDS - t0))s"
  tail -n 20 "$work/launch.out"
fi
if grep -q '"drained"\|drained' "$work/logs/coordinator.log" && grep -q 'shutdown requested' "$work/logs/workers.log"; then
  ok "the coordinator drained and told the workers to shut down"
else
  fail "clean shutdown" "no 'drained' in coordinator.log or no 'shutdown requested' in workers.log"
  tail -n 5 "$work/logs/coordinator.log" "$work/logs/workers.log"
fi
if grep -q 'coordinator exit status 0, workers exit status 0' "$work/launch.out"; then
  ok "coordinator and workers exited with status 0"
else
  fail "coordinator and workers exit status" "$(grep 'exit status' "$work/launch.out")"
fi
check_no_leftovers "no process left after SIGTERM" "$launch_id" "$port" 10

# SIGKILL of the launcher itself (no trap can run): the parent-death signal still stops the
# coordinator and the ranks.
if command -v setpriv >/dev/null && setpriv --help 2>&1 | grep -q -- --pdeathsig; then
  port=$(free_port)
  launch_id="launch-mpirun-kill-$$-$RANDOM"
  RESA_LAUNCH_ID=$launch_id "$root/launch/resa-launch" --model "$model" --tp 1 --sp 2 \
    --bin-dir "$bin" --listen "127.0.0.1:$port" --log-dir "$work/logs-kill" \
    --ready-file "$work/address-kill" --mpirun-flags "$mpirun_flags" --ready-timeout 150 \
    --drain-timeout 5 --grace 5 -- --threads 1 --ctx 256 --max-batch 1 --quiet --timeout 30 \
    >"$work/launch-kill.out" 2>&1 &
  launcher_pid=$!
  if wait_for_file "$work/address-kill" "$launcher_pid" 150; then
    kill -KILL "$launcher_pid"
    wait "$launcher_pid" 2>/dev/null || true
    launcher_pid=""
    check_no_leftovers "SIGKILL of the launcher: the group still stops (parent-death signal)" \
      "$launch_id" "$port" 30
  else
    fail "second launch (tp 1 x sp 2) reaches SERVING" "$(tail -n 5 "$work/launch-kill.out")"
  fi
else
  note "setpriv --pdeathsig is not available: a SIGKILLed launcher cannot stop its children"
fi
finish
