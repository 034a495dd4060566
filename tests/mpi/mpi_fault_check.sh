#!/bin/sh
# usage: mpi_fault_check.sh die|hang <bound seconds> <mpirun command and args...>
# Runs `<mpirun ...> mpi_fault_check <mode>` (the last argument is the program) and checks that
# the job fails, within the bound; for `die` that mpirun names the rank that exited (rank 2, exit
# code 3), for `hang` that a survivor reports DeadlineExceeded naming its rank and the all-reduce.
mode=$1; bound=$2; shift 2
start=$(date +%s)
out=$("$@" "$mode" 2>&1); rc=$?
took=$(( $(date +%s) - start ))
printf '%s\n' "$out"
echo "mode $mode: exit status $rc after ${took}s (bound ${bound}s)"
[ "$rc" -ne 0 ] || { echo "FAIL: the job succeeded although a rank failed"; exit 1; }
[ "$took" -le "$bound" ] || { echo "FAIL: took longer than ${bound}s"; exit 1; }
if [ "$mode" = die ]; then
  # The last of 3 ranks exits with status 3; mpirun must name it (a job that failed to launch,
  # or died some other way, does not pass).
  printf '%s\n' "$out" | grep -q "Process name: \[\[[0-9]*,1\],2\]" &&
    printf '%s\n' "$out" | grep -q "Exit code: *3" ||
    { echo "FAIL: mpirun did not report rank 2 exiting with status 3"; exit 1; }
fi
if [ "$mode" = hang ]; then
  printf '%s\n' "$out" | grep -q "rank 0: DEADLINE_EXCEEDED: mpi 'world' rank 0/.*AllReduce(int32 x 1, sum).*did not complete within 3s" ||
    { echo "FAIL: rank 0 did not report DeadlineExceeded naming rank and operation"; exit 1; }
fi
echo PASS
