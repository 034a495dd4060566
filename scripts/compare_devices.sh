#!/usr/bin/env bash
# Greedy generations of one prompt on the CPU and on the GPU backend, in dense, sparse and ReSA
# modes: prints whether each mode's texts are identical and, if not, how many characters agree.
# The CPU backend runs the model in fp32 (GGUF weights dequantised), the GPU backend in bf16, so
# long generations may part at a near-tie of the logits; the engine tests bound the logits gap.
# Sparse and ReSA texts part sooner: the weights' bf16 rounding alone changes a few block
# selections (on the CPU, fp32 vs bf16-rounded weights: docs/cuda_backend.md, "The default model
# on both backends").
#   usage: scripts/compare_devices.sh BUILD_DIR MODEL PROMPT_FILE [OUT_DIR] [extra resa generate flags]
set -uo pipefail
bin="$1/bin"; model="$2"; prompt="$3"; out="${4:-/tmp/compare_devices}"; shift 4 2>/dev/null || shift $#
mkdir -p "$out"
status=0
for mode in dense sparse resa; do
  failed=0
  for device in cpu cuda; do
    "$bin/resa" generate -m "$model" -f "$prompt" --device $device --mode $mode -n 64 \
      --min-blocks 4 "$@" > "$out/$mode.$device.txt" 2> "$out/$mode.$device.err" ||
      { echo "$mode $device: resa generate failed"; tail -3 "$out/$mode.$device.err"; status=1; failed=1; }
  done
  if [ $failed -ne 0 ]; then
    echo "$mode: not compared (a generation failed)"
    continue
  fi
  grep -h "^\[$mode\]" "$out/$mode.cuda.err" "$out/$mode.cpu.err" 2>/dev/null | sed 's/^/  /'
  python3 - "$out/$mode.cpu.txt" "$out/$mode.cuda.txt" "$mode" <<'EOF'
import sys
a, b = (open(p, encoding="utf-8", errors="replace").read() for p in sys.argv[1:3])
n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
same = a == b
print(f"{sys.argv[3]}: cpu and cuda {'identical' if same else 'differ'} "
      f"({n} of {max(len(a), len(b))} characters agree)")
EOF
done
exit $status
