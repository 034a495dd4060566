#!/usr/bin/env bash
# The control plane on a GPU, end to end, as a user runs it: `resa serve --device cuda`, then
# resa-coordinator + `resa-worker --device cuda --coordinator`, each driven by resa-client, against
# `resa generate --device cuda` on the same model. Needs a build with CUDA and gRPC.
#   usage: scripts/gpu_serving_check.sh BUILD_DIR MODEL OUT_DIR
# Prints one "ok"/"FAIL" line per check; exits 1 when any check failed.
set -uo pipefail
bin="$1/bin"; model="$2"; out="$3"
mkdir -p "$out"
failed=0
check() {  # check NAME CONDITION...
  local name="$1"; shift
  if "$@"; then echo "ok   $name"; else echo "FAIL $name"; failed=1; return 1; fi
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_serving() {  # wait_serving ADDR SECONDS (gives up when the server process is gone)
  local deadline=$(( $(date +%s) + $2 ))
  while [ "$(date +%s)" -lt $deadline ] && kill -0 "$server_pid" 2>/dev/null; do
    "$bin/resa-client" --server "$1" health >/dev/null 2>&1 && return 0
    sleep 1
  done
  return 1
}
device="${DEVICE:-cuda}"  # DEVICE=cpu runs the same checks on the CPU
prompt="The quick brown fox jumps over the lazy dog. Then it"
n=48

for mode in dense resa; do
  "$bin/resa" generate -m "$model" --device "$device" -p "$prompt" -n $n --mode $mode -q \
    > "$out/generate_$mode.txt" 2> "$out/generate_$mode.err"
  check "resa generate --device $device --mode $mode" test $? -eq 0
done

run_group() {  # run_group NAME: the server in $server_pid (log $log), on $addr, metrics on $maddr
  local name="$1"
  check "$name: SERVING within 300 s" wait_serving "$addr" 300
  "$bin/resa-client" --server "$addr" model > "$out/${name}_model.json" 2>&1
  check "$name: ModelInfo" grep -q '"worker_ready": *true' "$out/${name}_model.json"
  for mode in dense resa; do
    "$bin/resa-client" --server "$addr" generate -p "$prompt" -n $n --mode $mode --temperature 0 \
      > "$out/${name}_$mode.txt" 2> "$out/${name}_$mode.err"
    check "$name: generate --mode $mode" test $? -eq 0
    # resa generate ends its text with a newline, resa-client does not.
    check "$name: --mode $mode text equals resa generate's" \
      cmp -s <(cat "$out/${name}_$mode.txt"; echo) "$out/generate_$mode.txt"
  done
  # Eight concurrent streams, mixed modes and sampling, batched on the GPU.
  local pids=()
  for i in 0 1 2 3 4 5 6 7; do
    m=$([ $((i % 2)) -eq 0 ] && echo resa || echo sparse)
    "$bin/resa-client" --server "$addr" generate -p "$prompt $i" -n 64 --mode $m \
      --temperature 0.7 --top-p 0.9 --seed $i > "$out/${name}_c$i.txt" 2>&1 &
    pids+=($!)
  done
  local bad=0
  for p in "${pids[@]}"; do wait "$p" || bad=$((bad + 1)); done
  check "$name: 8 concurrent streams finish" test $bad -eq 0
  python3 -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen('http://$maddr/metrics', timeout=10).read().decode())" \
    > "$out/${name}_metrics.txt"
  check "$name: metrics count generated tokens" \
    awk '/^resa_generated_tokens_total /{ok = $2 >= 4 * 48 + 8} END{exit !ok}' \
    "$out/${name}_metrics.txt"
  kill -TERM "$server_pid"
  wait "$server_pid"
  local rc=$?
  check "$name: SIGTERM drains and exits 0" test $rc -eq 0 || tail -5 "$log"
}

# 1. resa serve: coordinator and an in-process GPU worker.
addr="127.0.0.1:$(free_port)"; maddr="127.0.0.1:$(free_port)"
"$bin/resa" serve --model "$model" --device "$device" --listen "$addr" --metrics-listen "$maddr" \
  --ctx 4096 --max-batch 8 > "$out/serve.log" 2>&1 &
server_pid=$!; log="$out/serve.log"
run_group serve

# 2. resa-coordinator + resa-worker (the cluster layout on one GPU).
addr="127.0.0.1:$(free_port)"; maddr="127.0.0.1:$(free_port)"
"$bin/resa-coordinator" --model "$model" --listen "$addr" --metrics-listen "$maddr" \
  > "$out/coordinator.log" 2>&1 &
server_pid=$!; log="$out/coordinator.log"
sleep 1
"$bin/resa-worker" -m "$model" --device "$device" --coordinator "$addr" --ctx 4096 --max-batch 8 \
  > "$out/worker.log" 2>&1 &
worker_pid=$!
run_group split
wait "$worker_pid"
check "split: the worker exits 0 after the coordinator's shutdown" test $? -eq 0

# Bad input: a grid the world cannot hold is refused with a message, not a crash
# (scripts/gpu_parallel_check.sh runs real TP x SP grids on GPUs).
"$bin/resa-worker" -m "$model" --device "$device" --tp 2 -p hi -n 4 > "$out/worker_tp2.txt" 2>&1
check "resa-worker --device $device --tp 2 in one process is refused" grep -q "mpirun -np" "$out/worker_tp2.txt"
exit $failed
