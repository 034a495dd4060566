#!/usr/bin/env bash
# Communication of a distributed decode step at np = 1, 2, 4 (resa-bench comm, one mpirun per
# grid), then one table of every grid against the np = 1 run of the same invocation: step time
# ratio, time per phase (selection exchange, LSE merge, TP all-reduces), communication share and
# bytes sent per rank per step. JSON lines of every run are kept in OUT (default: a temp file).
#
#   scripts/comm_bench.sh [--grids "1x1 1x2 2x1 1x4 2x2"] [--out FILE] [resa-bench comm flags...]
#   scripts/comm_bench.sh --model default --contexts 4096,16384 --steps 16
#
# RESA_BUILD_DIR picks the build (default: build). On few cores the ranks share them (threads
# per rank = cores / ranks, at least 1), so step times compare equal hardware, not equal cores
# per rank. Open MPI flags as the ctest entries: oversubscribe, root allowed, shared memory only.
set -euo pipefail
source "$(dirname "$0")/common.sh"
build="${RESA_BUILD_DIR:-$RESA_ROOT/build}"
bench="$build/bin/resa-bench"
[ -x "$bench" ] || die "$bench is missing (cmake --build $build --target resa-bench)"
command -v mpirun > /dev/null || die "mpirun is missing (apt-get install openmpi-bin)"

grids="1x1 1x2 2x1 1x4 2x2"
out=""
args=()
while [ $# -gt 0 ]; do
  case $1 in
    --grids) grids=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
[ -n "$out" ] || out=$(mktemp --suffix=.jsonl)
: > "$out"

mpi=(mpirun --oversubscribe --allow-run-as-root)
if mpirun --version 2>&1 | grep -Eq '\(Open MPI\) [1-4]\.'; then
  mpi+=(--mca btl self,vader --mca btl_vader_single_copy_mechanism none)
elif mpirun --version 2>&1 | grep -q 'Open MPI'; then
  mpi+=(--mca btl self,sm --mca btl_sm_single_copy_mechanism none)
fi

for grid in $grids; do
  tp=${grid%x*} sp=${grid#*x}
  np=$((tp * sp))
  log "np $np: tp $tp x sp $sp"
  "${mpi[@]}" -np "$np" "$bench" comm --tp "$tp" --sp "$sp" "${args[@]}" | tee -a "$out"
done

log "results in $out; ratios against np = 1 (1x1) of this run:"
python3 - "$out" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{"bench":"comm"')]
base = {r["context"]: r for r in rows if r["ranks"] == 1}
print("| ranks | tp x sp | ctx | n | step ms | vs np=1 | sel ms | merge ms | TP AR ms | comm % "
      "| floor % | replay us (sel, merge, AR) | sel B | merge B | TP AR B | KB/rank/step "
      "| exchanges/layer (sel, merge, AR) |")
print("|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---:|:---:|")
for r in rows:
    b = base.get(r["context"])
    ratio = f'{r["step_ms"] / b["step_ms"]:.2f}x' if b else "n/a"
    L = r["layers"]
    print(f'| {r["ranks"]} | {r["tp"]} x {r["sp"]} | {r["context"]} | {r["selected"]} '
          f'| {r["step_ms"]:.2f} | {ratio} | {r["selection_ms"]:.3f} | {r["merge_ms"]:.3f} '
          f'| {r["tp_allreduce_ms"]:.3f} | {100 * r["comm_share"]:.1f}% '
          f'| {100 * r["comm_floor_share"]:.1f}% | {r["selection_replay_us"]:.0f}, '
          f'{r["merge_replay_us"]:.0f}, {r["tp_allreduce_replay_us"]:.0f} '
          f'| {r["selection_bytes"]} | {r["merge_bytes"]} | {r["tp_allreduce_bytes"]} '
          f'| {r["bytes_per_rank"] / 1e3:.1f} '
          f'| {r["selection_calls"] / L:g}, {r["merge_calls"] / L:g}, '
          f'{r["tp_allreduce_calls"] / L:g} |')
EOF
