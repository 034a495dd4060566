#!/usr/bin/env bash
# Our dense decode kernel and PyTorch SDPA's kernels (cuDNN's flash forward and its reduction on
# the H200) under ncu on the same problems, one table: time, grid, warps a multiprocessor,
# registers, shared memory, DRAM bytes and throughput, L2 requests per byte. The kernel bench
# times them; this says how each moves its bytes (docs/kernels.md, "Where the time goes").
#   usage (repository root): bash kernels/cuda/bench/ncu_vs_sdpa.sh RESA_BENCH [SHAPE ...]
#   SHAPE = MODEL:CONTEXT:BATCH, MODEL 1.5B, 7B or HQ-HKV-D (default: 1.5B and 7B, 256K, b1, b8)
# Needs ncu and python3 with torch on a CUDA machine; writes $OUT (or /tmp/out)/ncu_vs_sdpa.*.
set -uo pipefail
bench=${1:?usage: ncu_vs_sdpa.sh RESA_BENCH [MODEL:CONTEXT:BATCH ...]}
shift
shapes=("$@")
[ ${#shapes[@]} -gt 0 ] || shapes=(1.5B:262144:1 1.5B:262144:8 7B:262144:1 7B:262144:8)
out="${OUT:-/tmp/out}"
mkdir -p "$out"
command -v ncu >/dev/null || { echo "ncu_vs_sdpa: ncu not found" >&2; exit 1; }
[ -x "$bench" ] || { echo "ncu_vs_sdpa: $bench is not an executable" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
source "$here/model_heads.sh"
metrics=gpu__time_duration.sum,launch__grid_size,launch__block_size,launch__registers_per_thread
metrics+=,launch__shared_mem_per_block_dynamic,launch__shared_mem_per_block_static
metrics+=,sm__warps_active.avg.per_cycle_active,dram__bytes_read.sum
metrics+=,dram__throughput.avg.pct_of_peak_sustained_elapsed,lts__t_requests_srcunit_tex_op_read.sum
metrics+=,lts__throughput.avg.pct_of_peak_sustained_elapsed
ncu_args=(--csv --print-units base --clock-control none --metrics "$metrics")
csv="$out/ncu_vs_sdpa.csv"
: >"$csv"
for shape in "${shapes[@]}"; do
  IFS=: read -r model ctx batch <<<"$shape"
  heads=$(model_heads "$model")
  # Ours: the dense decode launches after the bench's warm-up replays (2 skipped).
  timeout 180 ncu "${ncu_args[@]}" -k regex:DecodeKernel --launch-skip 2 --launch-count 1 \
    "$bench" kernels --models "$model" --contexts "$ctx" \
    --batches "$batch" --no-sdpa --iters 2 --prefill-tokens 0 2>"$out/ncu_vs_sdpa.log" |
    sed -n '/^"ID"/,$p' | sed "s/^/\"ours $shape\",/" >>"$csv" ||
    echo "ncu_vs_sdpa: ours $shape failed (see $out/ncu_vs_sdpa.log)" >&2
  # SDPA: its attention kernel and the reduction after it, past the warm-up calls.
  timeout 180 ncu "${ncu_args[@]}" -k regex:'sdpa|flash|reduction' --launch-skip 2 \
    --launch-count 2 python3 "$here/sdpa_baseline.py" --shape "$model:$heads:$ctx:$batch" \
    --iters 2 2>>"$out/ncu_vs_sdpa.log" |
    sed -n '/^"ID"/,$p' | sed "s/^/\"sdpa $shape\",/" >>"$csv" ||
    echo "ncu_vs_sdpa: sdpa $shape failed (see $out/ncu_vs_sdpa.log)" >&2
done
python3 - "$csv" <<'EOF' | tee "$out/ncu_vs_sdpa.md"
import collections, csv, sys

rows = collections.OrderedDict()  # (who, kernel id) -> {metric: value}
names = {}
col = {}
for rec in csv.reader(open(sys.argv[1])):
    if len(rec) > 2 and rec[1] == "ID":
        col = {name: i for i, name in enumerate(rec)}
        continue
    if not col or len(rec) < len(col):
        continue
    key = (rec[0], rec[col["ID"]])
    names[key] = rec[col["Kernel Name"]]
    rows.setdefault(key, {})[rec[col["Metric Name"]]] = rec[col["Metric Value"]].replace(",", "")

def num(m, k):
    try:
        return float(m.get(k, "nan"))
    except ValueError:
        return float("nan")

print("| run | kernel | us | grid | warps/SM | regs | smem KB | DRAM MB | DRAM % peak | "
      "L2 req/KB | L2 % peak |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for key, m in rows.items():
    name = names[key].split("(")[0].replace("void ", "")[:48]
    smem = (num(m, "launch__shared_mem_per_block_dynamic") +
            num(m, "launch__shared_mem_per_block_static")) / 1024
    dram = num(m, "dram__bytes_read.sum")
    req = num(m, "lts__t_requests_srcunit_tex_op_read.sum")
    print(f"| {key[0]} | {name} | {num(m, 'gpu__time_duration.sum') / 1e3:.1f} | "
          f"{num(m, 'launch__grid_size'):.0f}x{num(m, 'launch__block_size'):.0f} | "
          f"{num(m, 'sm__warps_active.avg.per_cycle_active'):.1f} | "
          f"{num(m, 'launch__registers_per_thread'):.0f} | {smem:.1f} | {dram / 1e6:.1f} | "
          f"{num(m, 'dram__throughput.avg.pct_of_peak_sustained_elapsed'):.1f} | "
          f"{req / (dram / 1024) if dram > 0 else float('nan'):.1f} | "
          f"{num(m, 'lts__throughput.avg.pct_of_peak_sustained_elapsed'):.1f} |")
EOF
