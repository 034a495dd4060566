#!/usr/bin/env bash
# TP x SP GPU ranks over NCCL on a machine with several GPUs (one rank per GPU), in one call:
# builds what it needs (gRPC off), runs the NCCL communicator conformance suite on all GPUs,
# `resa-worker --device cuda --gpu-comm nccl` on grids of 2..N ranks against one rank (greedy
# ids compared, decode speed from the stats line), and `resa-bench comm --device cuda` (the
# model's collectives staged through MPI, counted) next to one rank. Random-weight
# R1-Distill-Qwen-1.5B model written on the machine. Outputs: $OUT/build.log, $OUT/run.txt,
# $OUT/comm.jsonl.
#   usage (repository root, carried .carry/): bash scripts/gpu_nccl_check.sh
set -uo pipefail
source "$(dirname "$0")/gpu_carry_env.sh"
gpus=$(nvidia-smi -L | wc -l)
log=$out/run.txt
b=build-nccl
t0=$(date +%s)
{ cmake -S . -B $b -G Ninja -DCMAKE_BUILD_TYPE=Release -DRESA_GRPC=OFF \
    -DCMAKE_CUDA_ARCHITECTURES=90a -DCMAKE_PREFIX_PATH=$deps/usr \
    -DCMAKE_LIBRARY_ARCHITECTURE=x86_64-linux-gnu &&
  cmake --build $b -j"$(nproc)" --target resa-make-model &&
  { $b/bin/resa-make-model --shape r1-distill-qwen-1.5b --out /tmp/m -q & } &&
  cmake --build $b -j"$(nproc)" --target resa-worker resa-bench nccl_communicator_test; } \
  > $out/build.log 2>&1
echo "build rc=$? $(( $(date +%s) - t0 ))s, $gpus GPUs" | tee $log
wait
python3 -c "print(' '.join(['The quick brown fox jumps over the lazy dog number %d.' % i for i in range(120)]), end='')" > /tmp/p.txt
mpi=(mpirun --allow-run-as-root --oversubscribe --bind-to none)
common=(-m /tmp/m --device cuda -f /tmp/p.txt -n 32 --ctx 4096 --temperature 0 --min-blocks 4
        --sparse-ratio 0.1 --prefill-chunk 512)

echo "== NCCL conformance, $gpus ranks" >> $log
timeout 60 "${mpi[@]}" -np "$gpus" $b/bin/nccl_communicator_test 2>&1 | grep -E "PASSED|FAILED|SKIPPED|tests ran" >> $log

grids=("1 $gpus" "$gpus 1")
[ "$gpus" -ge 4 ] && grids+=("2 $(( gpus / 2 ))")
for mode in resa dense; do
  timeout 60 "${mpi[@]}" -np 1 $b/bin/resa-worker "${common[@]}" --mode $mode \
    --tokens-out /tmp/np1_$mode.ids > /dev/null 2> /tmp/np1_$mode.err
  echo "== -np 1 $mode rc=$?: $(grep -hE '^\[stats\]' /tmp/np1_$mode.err)" >> $log
  for g in "${grids[@]}"; do
    set -- $g
    name="tp$1-sp$2-$mode"
    # NCCL's own account of the transports it picked (P2P/NVLink, SHM, ...), rank 0's lines.
    NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,P2P,SHM \
    timeout 90 "${mpi[@]}" -np $(( $1 * $2 )) $b/bin/resa-worker "${common[@]}" --mode $mode \
      --tp $1 --sp $2 --gpu-comm nccl --tokens-out /tmp/$name.ids > /tmp/$name.out 2> /tmp/$name.err
    rc=$?
    same=$(python3 -c "
import sys
a, b = open('/tmp/$name.ids').read().split(), open('/tmp/np1_$mode.ids').read().split()
k = 0
while k < min(len(a), len(b)) and a[k] == b[k]: k += 1
print(k, 'of', len(b))" 2>&1)
    echo "== $name rc=$rc, ids identical to -np 1: first $same" >> $log
    grep -hE "rank 0:|^\[stats\]|^\[resa\]|error" /tmp/$name.err | head -6 >> $log
    grep -hE "NCCL INFO (Channel 00.* via|NCCL version|comm .* nRanks)" /tmp/$name.out /tmp/$name.err |
      sort -u | head -6 >> $log
  done
done

for g in "1 1" "${grids[@]}"; do
  set -- $g
  timeout 60 "${mpi[@]}" -np $(( $1 * $2 )) $b/bin/resa-bench comm --device cuda -m /tmp/m \
    --tp $1 --sp $2 --ctx 32768 --steps 8 >> $out/comm.jsonl 2>> $log
done
echo "done $(( $(date +%s) - t0 ))s" >> $log
cat $log
