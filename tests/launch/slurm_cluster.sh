#!/usr/bin/env bash
# A real single-node Slurm cluster, started here from Debian's packages, running the sbatch
# template launch/slurm/resa.sbatch with CPU workers:
#   1. packages (slurmctld, slurmd, slurm-client, munge; installed with apt-get when missing);
#   2. munged with a fresh key and its own socket in a temp dir (falls back to auth/none, saying
#      why, if munged cannot run here);
#   3. slurm.conf naming this host (one node, 4 CPUs; no cgroups: proctrack/linuxproc, task/none),
#      slurmctld and slurmd on free ports, the node IDLE;
#   4. which srun --mpi plugin starts Open MPI ranks here (pmix, else pmi2, else mpirun inside the
#      allocation), proven with a 2-rank resa-worker generation;
#   5. sbatch of the template (tp 2 x sp 2 on 4 tasks): the job reaches RUNNING, the coordinator
#      SERVING, resa-client gets a generation, every rank printed its line;
#   6. scancel: the job ends, the launcher drained and stopped, no resa-worker/resa-coordinator or
#      slurmstepd of the job is left;
#   7. bad input through sbatch: a grid that does not match the tasks, a model that is missing:
#      the job fails fast with a message naming the host, nothing left;
#   8. teardown: jobs cancelled, daemons stopped, temp dir removed (also on failure: trap).
# A step that cannot work on this machine says which and why; later steps that do not depend on
# it still run. Exit 77 (ctest: skipped) when Slurm cannot be installed or started here at all.
#
# usage: slurm_cluster.sh BIN_DIR REPO_ROOT WORK_DIR
set -euo pipefail
bin=$1 root=$2 work=$3
# shellcheck source=tests/launch/common.sh
source "$root/tests/launch/common.sh"
require_model no-mpirun
for b in resa-coordinator resa-worker resa-client; do
  [ -x "$bin/$b" ] || { echo "FAIL: $bin/$b is not built"; exit 1; }
done
rm -rf "$work" && mkdir -p "$work"
host=$(hostname -s 2>/dev/null || hostname)
skipped=0
skip() { echo "skip $1: $2"; skipped=$((skipped + 1)); }
step() { echo; echo "== step $*"; }

# ---- teardown, whatever happens ----------------------------------------------------------------
tmp="" munged_pid="" ctld_pid="" slurmd_pid="" torn_down=0
teardown() {
  [ "$torn_down" = 0 ] || return 0
  torn_down=1
  set +e
  echo
  echo "== step 8: teardown"
  if [ -n "${SLURM_CONF:-}" ] && [ -n "$ctld_pid" ] && kill -0 "$ctld_pid" 2>/dev/null; then
    scancel --full --signal=KILL --user="$(id -un)" >/dev/null 2>&1
    scontrol shutdown >/dev/null 2>&1
  fi
  local p deadline=$((SECONDS + 15))
  for p in $slurmd_pid $ctld_pid $munged_pid; do
    while kill -0 "$p" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    kill -KILL "$p" 2>/dev/null
  done
  # Job processes (slurmstepd and below) of this cluster carry its SLURM_CONF in their environment.
  if [ -n "$tmp" ]; then
    local left
    left=$(launch_pids_conf "$tmp/slurm.conf")
    # shellcheck disable=SC2086  # a list of PIDs
    [ -z "$left" ] || kill -KILL $left 2>/dev/null
    mkdir -p "$work/cluster"
    cp -r "$tmp/log" "$tmp/slurm.conf" "$work/cluster/" 2>/dev/null
    rm -rf "$tmp"
    echo "daemons stopped, $tmp removed (logs and slurm.conf kept in $work/cluster)"
  fi
}
launch_pids_conf() {
  local f pid
  for f in /proc/[0-9]*/environ; do
    pid=${f#/proc/}
    pid=${pid%/environ}
    [ "$pid" != "$$" ] || continue
    if tr '\0' '\n' 2>/dev/null <"$f" | grep -qx "SLURM_CONF=$1"; then echo "$pid"; fi
  done | tr '\n' ' '
}
trap teardown EXIT
trap 'exit 143' TERM INT

# ---- 1. packages ---------------------------------------------------------------------------------
step "1: packages"
need_pkgs=()
for p in slurmctld slurmd slurm-client munge; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "SKIPPED: ${need_pkgs[*]} missing and not root (install them: scripts/install_deps.sh)"
    exit 77
  fi
  echo "installing ${need_pkgs[*]}"
  if ! { apt-get -o DPkg::Lock::Timeout=120 update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y -qq \
      --no-install-recommends "${need_pkgs[@]}"; } >"$work/apt.log" 2>&1; then
    echo "SKIPPED: apt-get could not install ${need_pkgs[*]}: $(tail -n 3 "$work/apt.log")"
    exit 77
  fi
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "SKIPPED: this test runs slurmd, which must be root to start jobs as the submitting user"
  exit 77
fi
ok "packages" "slurmd $(dpkg-query -W -f='${Version}' slurmd), munge $(dpkg-query -W -f='${Version}' munge)"

# ---- 2. munge --------------------------------------------------------------------------------
step "2: munge"
tmp=$(mktemp -d /tmp/resa-slurm.XXXXXX)
chmod 755 "$tmp" # munged insists that every directory above its socket is searchable by all
mkdir -p "$tmp/munge" "$tmp/run" "$tmp/log" "$tmp/state" "$tmp/spool"
chmod 700 "$tmp/munge"
chmod 755 "$tmp/run"
auth=munge
if ! mungekey --create --keyfile="$tmp/munge/munge.key" >/dev/null 2>&1; then
  dd if=/dev/urandom of="$tmp/munge/munge.key" bs=1024 count=1 status=none
fi
chmod 600 "$tmp/munge/munge.key"
if munged --socket="$tmp/run/munge.sock" --key-file="$tmp/munge/munge.key" \
  --pid-file="$tmp/run/munged.pid" --log-file="$tmp/log/munged.log" \
  --seed-file="$tmp/munge/munged.seed" >"$tmp/log/munged.out" 2>&1; then
  munged_pid=$(cat "$tmp/run/munged.pid" 2>/dev/null || true)
fi
if [ -n "$munged_pid" ] && munge -S "$tmp/run/munge.sock" -n 2>/dev/null |
  unmunge -S "$tmp/run/munge.sock" >/dev/null 2>&1; then
  ok "munged with a fresh key" "socket $tmp/run/munge.sock, a credential round trip works"
else
  auth=none
  skip "munge" "munged did not run here ($(tail -n 1 "$tmp/log/munged.out" "$tmp/log/munged.log" 2>/dev/null | tr '\n' ' ' | cut -c1-200)); Slurm runs with auth/none instead"
fi

# ---- 3. slurm.conf, slurmctld, slurmd -------------------------------------------------------
step "3: slurmctld and slurmd"
ctld_port=$(free_port)
slurmd_port=$(free_port)
while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port=$(free_port); done
{
  echo "# generated by tests/launch/slurm_cluster.sh: one node ($host), no cgroups"
  echo "ClusterName=resatest"
  echo "SlurmctldHost=$host(127.0.0.1)"
  echo "SlurmctldPort=$ctld_port"
  echo "SlurmdPort=$slurmd_port"
  echo "SlurmUser=root"
  echo "SlurmdUser=root"
  if [ "$auth" = munge ]; then
    echo "AuthType=auth/munge"
    echo "CredType=cred/munge"
    echo "AuthInfo=socket=$tmp/run/munge.sock"
  else
    echo "AuthType=auth/none"
    echo "CredType=cred/none"
  fi
  echo "StateSaveLocation=$tmp/state"
  echo "SlurmdSpoolDir=$tmp/spool/slurmd-%n"
  echo "SlurmctldPidFile=$tmp/run/slurmctld.pid"
  echo "SlurmdPidFile=$tmp/run/slurmd.pid"
  echo "SlurmctldLogFile=$tmp/log/slurmctld.log"
  echo "SlurmdLogFile=$tmp/log/slurmd.log"
  echo "ProctrackType=proctrack/linuxproc"
  echo "TaskPlugin=task/none"
  echo "JobAcctGatherType=jobacct_gather/none"
  echo "AccountingStorageType=accounting_storage/none"
  echo "SelectType=select/cons_tres"
  echo "SelectTypeParameters=CR_CPU"
  echo "MpiDefault=none"
  echo "ReturnToService=2"
  echo "KillWait=10"
  echo "MinJobAge=300"
  echo "SlurmctldTimeout=30"
  echo "SlurmdTimeout=30"
  # 4 CPUs whatever this machine has (config_overrides: trust slurm.conf, not the hardware), so
  # the template's 4 tasks fit on one node.
  echo "SlurmdParameters=config_overrides"
  echo "NodeName=$host NodeAddr=127.0.0.1 CPUs=4 State=UNKNOWN"
  echo "PartitionName=test Nodes=$host Default=YES MaxTime=60 State=UP OverSubscribe=YES"
} >"$tmp/slurm.conf"
export SLURM_CONF=$tmp/slurm.conf
daemons_up=0
# The daemons fork into the background and write their pid files a moment later.
pid_from() { # FILE: waits up to 15 s for it; prints the PID
  local i
  for ((i = 0; i < 75; i++)); do
    if [ -s "$1" ]; then
      cat "$1"
      return 0
    fi
    sleep 0.2
  done
  return 1
}
if slurmctld -i >"$tmp/log/slurmctld.out" 2>&1; then
  ctld_pid=$(pid_from "$tmp/run/slurmctld.pid" || true)
fi
if [ -n "$ctld_pid" ] && slurmd >"$tmp/log/slurmd.out" 2>&1; then
  slurmd_pid=$(pid_from "$tmp/run/slurmd.pid" || true)
fi
state=""
deadline=$((SECONDS + 40))
while [ $SECONDS -lt $deadline ]; do
  state=$(sinfo -h -N -n "$host" -o %t 2>/dev/null | head -1 || true)
  [ "$state" = idle ] && break
  sleep 1
done
if [ "$state" = idle ]; then
  daemons_up=1
  ok "single-node cluster up" "node $host idle, 4 CPUs ($(nproc) real), slurmctld :$ctld_port, slurmd :$slurmd_port, auth/$auth"
else
  fail "single-node cluster up" "node state '${state:-none}' after 40s"
  echo "  slurmctld pid '${ctld_pid}', slurmd pid '${slurmd_pid}'; last log lines:"
  tail -n 8 "$tmp"/log/slurm*.log "$tmp"/log/slurm*.out 2>/dev/null | sed 's/^/    /'
fi
if [ "$daemons_up" = 0 ]; then
  for s in "4: srun MPI plugin" "5: sbatch of the template" "6: scancel" "7: bad input through sbatch"; do
    skip "$s" "needs the running cluster of step 3, which did not come up here (see the log lines above)"
  done
  teardown
  finish || true
  echo "SKIPPED: Slurm could not run on this machine (step 3)"
  exit 77
fi

# ---- 4. srun and Open MPI ------------------------------------------------------------------
step "4: srun --mpi plugin for Open MPI ranks"
plugins=$(srun --mpi=list 2>&1 | tr '\n' ' ')
echo "srun --mpi=list: $plugins"
echo "ompi_info pmix: $(ompi_info 2>/dev/null | grep -i 'MCA pmix' | awk '{print $3}' | tr '\n' ' ')"
launcher=srun srun_mpi=""
methods="pmix pmi2"
# RESA_TEST_SLURM_LAUNCHER=mpirun exercises the fallback (mpirun inside the allocation) on purpose.
if [ "${RESA_TEST_SLURM_LAUNCHER:-}" = mpirun ]; then
  methods=""
  note "RESA_TEST_SLURM_LAUNCHER=mpirun: not trying srun's plugins"
fi
for m in $methods; do
  grep -qw "$m" <<<"$plugins" || { note "srun has no $m plugin here"; continue; }
  if timeout 120 srun --mpi="$m" --ntasks=2 --kill-on-bad-exit=1 -t 3 \
    "$root/launch/resa-rank" -- "$bin/resa-worker" --model "$model" --tp 2 --sp 1 \
    --prompt "Hello" -n 2 --threads 1 --quiet --timeout 60 >"$work/srun-$m.log" 2>&1; then
    srun_mpi=$m
    break
  fi
  note "srun --mpi=$m could not run a 2-rank Open MPI job here: $(grep -m2 -i 'error' "$work/srun-$m.log" | tr '\n' ' ' | cut -c1-200)"
done
if [ -n "$srun_mpi" ]; then
  ok "srun --mpi=$srun_mpi starts Open MPI ranks" "$(grep -m1 '^\[resa-launch\] rank 1/2' "$work/srun-$srun_mpi.log")"
else
  launcher=mpirun
  [ -z "$methods" ] || skip "srun-launched ranks" "neither srun --mpi=pmix nor pmi2 could start Open MPI ranks here; the template runs with RESA_LAUNCHER=mpirun (Open MPI launching inside the allocation)"
fi

# ---- 5. sbatch of the template -------------------------------------------------------------
step "5: sbatch launch/slurm/resa.sbatch (tp 2 x sp 2, CPU ranks)"
port=$(free_port)
launch_id="slurm-$$-$RANDOM"
# submit NAME PORT [NAME=VALUE...]: sbatch of the template on 4 tasks; prints the job id.
submit() {
  local name=$1 p=$2
  shift 2
  env RESA_MODEL="$model" RESA_TP=2 RESA_SP=2 RESA_PORT="$p" RESA_METRICS_PORT= \
    RESA_LOG_DIR="$work/$name-logs" RESA_BIN_DIR="$bin" RESA_ROOT="$root" \
    RESA_SRUN_MPI="${srun_mpi:-pmix}" RESA_LAUNCHER="$launcher" RESA_MPIRUN_FLAGS="$mpirun_flags" \
    RESA_WORKER_FLAGS="--threads 1 --ctx 512 --max-batch 2 --quiet --timeout 60" \
    RESA_LAUNCH_ID="$launch_id-$name" "$@" \
    sbatch --parsable --job-name="resa-$name" --nodes=1 --ntasks=4 --ntasks-per-node=4 \
    --cpus-per-task=1 --gpus-per-node=0 --time=10 --output="$work/$name-%j.out" \
    --export=ALL "$root/launch/slurm/resa.sbatch"
}
job_state() { scontrol show job "$1" -o 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
wait_state() { # JOB SECONDS STATE...: waits until the job is in one of the states; prints it
  local job=$1 deadline=$((SECONDS + $2)) s
  shift 2
  while true; do
    s=$(job_state "$job")
    if [[ " $* " == *" $s "* ]] || [ $SECONDS -ge $deadline ]; then
      echo "${s:-UNKNOWN}"
      return 0
    fi
    sleep 0.5
  done
}

job=""
if job=$(submit main "$port" 2>"$work/sbatch.err"); then
  s=$(wait_state "$job" 30 RUNNING FAILED COMPLETED CANCELLED)
  if [ "$s" = RUNNING ]; then
    ok "sbatch of the template: job $job RUNNING"
  else
    fail "sbatch of the template reaches RUNNING" "job $job is $s"
  fi
else
  fail "sbatch of the template" "$(cat "$work/sbatch.err")"
  job=""
fi
serving=0
if [ -n "$job" ]; then
  deadline=$((SECONDS + 170))
  while [ ! -s "$work/main-logs/address" ] && [ $SECONDS -lt $deadline ]; do
    [ "$(job_state "$job")" = RUNNING ] || break
    sleep 1
  done
  if [ -s "$work/main-logs/address" ]; then
    serving=1
    addr=$(cat "$work/main-logs/address")
    ok "the job's coordinator is SERVING" "$addr (written by resa-launch after health SERVING)"
  else
    fail "the job's coordinator is SERVING" "no address file; job $(job_state "$job")"
    tail -n 25 "$work"/main-*.out 2>/dev/null | sed 's/^/    /'
    tail -n 10 "$work"/main-logs/*.log 2>/dev/null | sed 's/^/    /'
  fi
fi
if [ "$serving" = 1 ]; then
  out="$work/main-$job.out"
  n=$(grep -c "^\[resa-launch\] rank [0-3]/4 local rank [0-3]/4 host $host" "$out" || true)
  if [ "$n" -eq 4 ]; then
    ok "every rank printed rank/local rank/world size from Slurm's environment" "$(grep -m1 '^\[resa-launch\] rank 0/4' "$out")"
  else
    fail "rank lines in the job output" "$n of 4"
  fi
  if "$bin/resa-client" --server "$addr" health >/dev/null 2>&1; then
    ok "resa-client health from outside the job" "SERVING"
  else
    fail "resa-client health from outside the job"
  fi
  if "$bin/resa-client" --server "$addr" --deadline 120 generate --prompt "The capital of France is" \
    --max-tokens 12 --temperature 0 --json >"$work/generate.jsonl" 2>"$work/generate.err"; then
    messages=$(grep -c . "$work/generate.jsonl" || true)
    if [ "$messages" -ge 3 ]; then
      ok "a client gets a streamed generation from the Slurm job" "$messages messages"
    else
      fail "generation from the Slurm job" "$messages messages: $(head -c 300 "$work/generate.jsonl")"
    fi
  else
    fail "generation from the Slurm job" "$(tail -c 300 "$work/generate.err")"
  fi
fi

# ---- 6. scancel ------------------------------------------------------------------------------
step "6: scancel"
if [ -n "$job" ]; then
  t0=$SECONDS
  scancel "$job"
  s=$(wait_state "$job" 60 CANCELLED COMPLETED FAILED TIMEOUT)
  # the job's record says CANCELLED at once; its processes may take up to KillWait to go
  deadline=$((SECONDS + 30))
  while pgrep -f "slurmstepd: \[${job}[.]" >/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
  if [ "$s" = CANCELLED ] && ! pgrep -f "slurmstepd: \[${job}[.]" >/dev/null; then
    ok "scancel ends the job" "CANCELLED, its steps gone after $((SECONDS - t0))s"
  else
    fail "scancel ends the job" "state $s, steps: $(pgrep -af "slurmstepd: \[${job}[.]" | tr '\n' ' ')"
  fi
  check_no_leftovers "no resa-worker/resa-coordinator left after scancel" "$launch_id-main" "$port" 15
  if grep -q "resa-launch: stopping (SIGTERM)" "$work/main-$job.out" 2>/dev/null; then
    ok "the launcher got the cancel signal and stopped the group" "$(grep -m1 'exit status' "$work/main-$job.out")"
  else
    fail "the launcher handled scancel's SIGTERM" "no 'stopping (SIGTERM)' in $work/main-$job.out"
  fi
else
  skip "scancel" "no job was submitted in step 5"
fi

# ---- 7. bad input through sbatch ---------------------------------------------------------------
step "7: bad input through sbatch"
# bad_job NAME FRAGMENT [NAME=VALUE...]: the job fails within 60 s, its output has FRAGMENT.
bad_job() {
  local name=$1 frag=$2 p j s t0
  shift 2
  p=$(free_port)
  t0=$SECONDS
  if ! j=$(submit "$name" "$p" "$@" 2>"$work/sbatch-$name.err"); then
    fail "$name" "sbatch refused: $(cat "$work/sbatch-$name.err")"
    return
  fi
  s=$(wait_state "$j" 60 FAILED COMPLETED CANCELLED TIMEOUT)
  if [ "$s" != FAILED ]; then
    fail "$name" "job $j is $s after $((SECONDS - t0))s (want FAILED)"
    scancel "$j" 2>/dev/null || true
  elif ! grep -qF -- "$frag" "$work/$name-$j.out"; then
    fail "$name" "no '$frag' in: $(tail -c 400 "$work/$name-$j.out")"
  else
    ok "$name" "FAILED in $((SECONDS - t0))s: $(grep -m1 -F -- "$frag" "$work/$name-$j.out" | cut -c1-160)"
  fi
  check_no_leftovers "  ...and nothing left ($name)" "$launch_id-$name" "$p" 15
}
bad_job "grid 3x1 on a 4-task job" \
  "resa-launch: host $host: error: grid tp 3 x sp 1 needs 3 ranks, but the Slurm allocation has 4 tasks" \
  RESA_TP=3 RESA_SP=1
bad_job "model missing on the node" \
  "error: model $work/no-such-dir/model.gguf not found on this host" \
  RESA_MODEL="$work/no-such-dir/model.gguf"

teardown
echo
[ "$skipped" -eq 0 ] || echo "($skipped step(s) could not run here; each says why above)"
finish
