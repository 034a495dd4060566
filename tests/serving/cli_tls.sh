#!/usr/bin/env bash
# resa-client against real servers over real sockets: every subcommand and its exit codes, a TLS
# + bearer-token round trip with throwaway certificates made by openssl now, the server's refusal
# of an unprotected non-loopback --listen, and a coordinator without a worker (NOT_SERVING,
# UNAVAILABLE). Every process started here is killed on exit.
#
# usage: cli_tls.sh BIN_DIR WORK_DIR [--split]
#   --split: the TLS server is resa-coordinator + a resa-worker that connects with --tls-ca and
#   --token-file (instead of `resa serve` with its in-process worker).
set -uo pipefail
bin=$1 work=$2 split=${3:-}
model="${XDG_CACHE_HOME:-$HOME/.cache}/resa/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$model" ]; then
  echo "SKIPPED: default model not found at $model (run ./scripts/fetch_model.sh)"; exit 77
fi
command -v openssl >/dev/null || { echo "SKIPPED: openssl not installed"; exit 77; }
rm -rf "$work" && mkdir -p "$work"
export OMP_WAIT_POLICY=passive
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; }
trap cleanup EXIT
trap 'exit 143' TERM INT
passed=0 failed=0
ok() { echo "ok   $1${2:+: $2}"; passed=$((passed + 1)); }
fail() { echo "FAIL $1${2:+: $2}"; failed=$((failed + 1)); }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# expect NAME WANT_RC FRAGMENT CMD...: runs CMD, checks its exit code (WANT_RC "fail": any code
# from 1 to 127, i.e. an error exit and not a crash) and that stdout+stderr contain FRAGMENT.
expect() {
  local name=$1 want=$2 frag=$3
  shift 3
  local out rc
  out=$("$@" 2>&1 </dev/null)
  rc=$?
  if [ "$want" = fail ] && { [ "$rc" -eq 0 ] || [ "$rc" -ge 128 ]; }; then
    fail "$name" "exit $rc, want an error exit: $(tail -c 300 <<<"$out")"; return
  elif [ "$want" != fail ] && [ "$rc" -ne "$want" ]; then
    fail "$name" "exit $rc, want $want: $(tail -c 300 <<<"$out")"; return
  fi
  if ! grep -qF -- "$frag" <<<"$out"; then fail "$name" "no '$frag' in: $(tail -c 300 <<<"$out")"; return; fi
  ok "$name" "$(grep -F -- "$frag" <<<"$out" | head -1 | cut -c1-120)"
}

"$(dirname "$0")/make_test_certs.sh" "$work/certs" || { echo "FAIL: cannot make certificates"; exit 1; }
head -c 24 /dev/urandom | base64 >"$work/token"
echo "wrong-token" >"$work/wrong-token"
port=$(free_port)
addr=127.0.0.1:$port

# The server refuses to expose itself unprotected (before loading anything).
expect "non-loopback --listen without TLS refused" fail "not a loopback address" \
  "$bin/resa" serve --model "$model" --listen "0.0.0.0:$port"
expect "--tls-cert without --tls-key refused" fail "--tls-key" \
  "$bin/resa" serve --model "$model" --listen "$addr" --tls-cert "$work/certs/server.pem"
expect "missing --token-file refused" fail "no-such-token" \
  "$bin/resa" serve --model "$model" --listen "$addr" --token-file "$work/no-such-token"

# TLS + token server.
tls_server=(--tls-cert "$work/certs/server.pem" --tls-key "$work/certs/server.key"
            --token-file "$work/token" --log-format json)
if [ "$split" = "--split" ]; then
  "$bin/resa-coordinator" --model "$model" --listen "$addr" "${tls_server[@]}" >"$work/serve.log" 2>&1 &
  pids+=($!)
  "$bin/resa-worker" --model "$model" --coordinator "localhost:$port" --threads 2 --ctx 512 \
    --max-batch 4 --tls-ca "$work/certs/ca.pem" --token-file "$work/token" >"$work/worker.log" 2>&1 &
  pids+=($!)
else
  "$bin/resa" serve --model "$model" --listen "$addr" --threads 2 --ctx 512 --max-batch 4 \
    "${tls_server[@]}" >"$work/serve.log" 2>&1 &
  pids+=($!)
fi
client=("$bin/resa-client" --server "localhost:$port" --tls-ca "$work/certs/ca.pem"
        --token-file "$work/token")
for _ in $(seq 1 240); do
  "${client[@]}" --deadline 2 health >/dev/null 2>&1 && break
  kill -0 "${pids[0]}" 2>/dev/null || break
  sleep 0.5
done
# The checks against the TLS server; run only when it came up (one failure instead of a cascade).
tls_checks() {
  expect "health over TLS: SERVING" 0 "SERVING" "${client[@]}" health
  expect "model" 0 '"architecture": "llama"' "${client[@]}" model
  expect "generate streams text" 0 "[report] job=" "${client[@]}" generate -p "The capital of France is" -n 8
  out=$("${client[@]}" generate -p "The capital of France is" -n 8 2>/dev/null)
  [ -n "$out" ] && ok "generate prints text" "$out" || fail "generate prints text" "empty stdout"
  expect "generate --chat style" 0 "Paris" "${client[@]}" generate --user "What is the capital of France?" -n 24
  json_out=$("${client[@]}" generate --json -p "Hello" -n 4 2>/dev/null)
  if python3 -c '
import json, sys
lines = [json.loads(l) for l in sys.stdin.read().splitlines()]
assert lines and lines[-1]["done"] is True and lines[-1]["state"] == "JOB_STATE_FINISHED", lines[-1]
assert all(l["job_id"] == lines[0]["job_id"] for l in lines)
' <<<"$json_out"; then ok "generate --json lines"; else fail "generate --json lines" "$json_out"; fi
  job=$("${client[@]}" submit -p "Once upon a time" -n 6 --tag cli-test 2>&1)
  [[ "$job" =~ ^[A-Za-z0-9_.-]+$ ]] && ok "submit prints a job id" "$job" || fail "submit prints a job id" "$job"
  expect "status --wait" 0 '"state": "JOB_STATE_FINISHED"' "${client[@]}" status "$job" --wait
  expect "status shows the tag" 0 '"client_tag": "cli-test"' "${client[@]}" status "$job"
  expect "list" 0 "$job" "${client[@]}" list
  expect "list --state finished" 0 "$job" "${client[@]}" list --state finished --limit 50
  long=$("${client[@]}" submit -p "Count:" -n 400 --ignore-eos 2>&1)
  expect "cancel" 0 '"job_id": "'"$long"'"' "${client[@]}" cancel "$long"
  expect "status of a cancelled job --wait exits 2" 2 "JOB_STATE_CANCELLED" "${client[@]}" status "$long" --wait
  expect "cancel unknown job -> NOT_FOUND (15)" 15 "NOT_FOUND" "${client[@]}" cancel no-such-job
  expect "status unknown job -> NOT_FOUND (15)" 15 "NOT_FOUND" "${client[@]}" status no-such-job
  expect "empty prompt -> INVALID_ARGUMENT (13)" 13 "INVALID_ARGUMENT" "${client[@]}" generate -p ""
  expect "negative temperature -> INVALID_ARGUMENT" 13 "temperature" "${client[@]}" generate -p hi --temperature -1
  expect "wrong token -> UNAUTHENTICATED (26)" 26 "UNAUTHENTICATED" \
    "$bin/resa-client" --server "localhost:$port" --tls-ca "$work/certs/ca.pem" --token-file "$work/wrong-token" model
  expect "no token -> UNAUTHENTICATED (26)" 26 "bearer token" \
    "$bin/resa-client" --server "localhost:$port" --tls-ca "$work/certs/ca.pem" generate -p hi -n 2
  expect "plaintext to a TLS server -> UNAVAILABLE (24)" 24 "UNAVAILABLE" \
    "$bin/resa-client" --server "localhost:$port" --token-file "$work/token" --deadline 10 model
  expect "untrusted server certificate -> UNAVAILABLE (24)" 24 "UNAVAILABLE" \
    "$bin/resa-client" --server "localhost:$port" --tls-ca "$work/certs/client.pem" \
    --token-file "$work/token" --deadline 10 model
  expect "deadline -> DEADLINE_EXCEEDED (14)" 14 "DEADLINE_EXCEEDED" \
    "${client[@]}" --deadline 1 generate -p "Count:" -n 400 --ignore-eos
  if grep -q '^{"ts":"' "$work/serve.log" && python3 -c '
import json, sys
for line in open(sys.argv[1]):
    if line.startswith("{"):
        json.loads(line)
' "$work/serve.log"; then ok "--log-format json writes JSON lines"; else
    fail "--log-format json writes JSON lines" "$(head -3 "$work/serve.log")"; fi
  if [ "$split" = "--split" ]; then
    # A worker with the wrong token is refused and exits non-zero, naming the reason.
    expect "worker with a wrong token is refused" fail "UNAUTHENTICATED" timeout 120 \
      "$bin/resa-worker" --model "$model" --coordinator "localhost:$port" --threads 1 --ctx 256 \
      --max-batch 1 --tls-ca "$work/certs/ca.pem" --token-file "$work/wrong-token"
  fi
  kill -TERM "${pids[0]}"  # the coordinator; a worker is shut down by it
  for p in "${pids[@]}"; do
    wait "$p"
    rc=$?
    [ $rc -eq 0 ] && ok "SIGTERM: pid $p exits 0" || fail "SIGTERM: pid $p exits 0" "exit $rc"
  done
  pids=()
}
if kill -0 "${pids[0]}" 2>/dev/null; then
  tls_checks
else
  fail "TLS server running" "it exited: $(tail -3 "$work/serve.log")"
fi
for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
pids=()

# A coordinator without a worker.
port2=$(free_port)
"$bin/resa-coordinator" --model "$model" --listen "127.0.0.1:$port2" >"$work/coordinator.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do
  "$bin/resa-client" --server "127.0.0.1:$port2" --deadline 2 model >/dev/null 2>&1 && break
  sleep 0.5
done
expect "no worker: health NOT_SERVING (exit 3)" 3 "NOT_SERVING" "$bin/resa-client" --server "127.0.0.1:$port2" health
expect "no worker: generate -> UNAVAILABLE (24)" 24 "UNAVAILABLE" \
  "$bin/resa-client" --server "127.0.0.1:$port2" generate -p hi -n 2
expect "no worker: model says worker_ready false" 0 '"worker_ready": false' \
  "$bin/resa-client" --server "127.0.0.1:$port2" model

echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
