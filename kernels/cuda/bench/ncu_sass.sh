#!/usr/bin/env bash
# One attention kernel's SASS under ncu: which instructions it executes and where its warps
# stall. Profiles our dense decode (`ours`) or the kernel PyTorch's SDPA runs (`sdpa`: cuDNN's
# flash forward on the H200) with ncu's full set on one problem, then prints the executed
# instruction mix by opcode, every global-load instruction with its L2 sectors per execution,
# the stall reasons and the instructions with the most stall samples (docs/kernels.md, "Where the
# time goes", run 39, read cuDNN's loads this way).
#   usage (repository root): bash kernels/cuda/bench/ncu_sass.sh ours|sdpa MODEL:CONTEXT:BATCH
#                            [RESA_BENCH]   (RESA_BENCH for `ours`; MODEL 1.5B, 7B or HQ-HKV-D)
# Needs ncu (and python3 with torch for `sdpa`) on a CUDA machine; writes $OUT (or /tmp/out)/
# ncu_sass_WHO.{ncu-rep,csv,md}.
set -uo pipefail
usage="usage: ncu_sass.sh ours|sdpa MODEL:CONTEXT:BATCH [RESA_BENCH]"
if [ $# -lt 2 ] || [ $# -gt 3 ]; then echo "$usage" >&2; exit 1; fi
who=$1 shape=$2 bench=${3:-}
case "$who" in ours | sdpa) ;; *) echo "$usage" >&2; exit 1 ;; esac
IFS=: read -r model ctx batch <<<"$shape"
if [ -z "$model" ] || [ -z "$ctx" ] || [ -z "$batch" ]; then echo "$usage" >&2; exit 1; fi
if [ "$who" = ours ] && [ ! -x "$bench" ]; then
  echo "ncu_sass: ours needs RESA_BENCH (an executable)" >&2; exit 1
fi
command -v ncu >/dev/null || { echo "ncu_sass: ncu not found" >&2; exit 1; }
out="${OUT:-/tmp/out}"
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)
source "$here/model_heads.sh"
heads=$(model_heads "$model")
rep="$out/ncu_sass_$who"
args=(--set full --import-source no --launch-count 1 -f -o "$rep")
case "$who" in
  ours)
    timeout 300 ncu "${args[@]}" -k regex:DecodeKernel --launch-skip 2 "$bench" kernels \
      --models "$model" --contexts "$ctx" --batches "$batch" --no-sdpa --iters 2 \
      --prefill-tokens 0 >"$out/ncu_sass_$who.log" 2>&1 ;;
  sdpa)
    timeout 300 ncu "${args[@]}" -k regex:'sdpa|flash' --launch-skip 2 python3 \
      "$here/sdpa_baseline.py" --shape "$model:$heads:$ctx:$batch" --iters 2 \
      >"$out/ncu_sass_$who.log" 2>&1 ;;
esac
[ -f "$rep.ncu-rep" ] || { echo "ncu_sass: no report (see $out/ncu_sass_$who.log)" >&2; exit 1; }
ncu -i "$rep.ncu-rep" --page source --print-source sass --csv >"$rep.csv" \
  2>>"$out/ncu_sass_$who.log"
python3 - "$rep.csv" <<'PY' | tee "$rep.md"
import collections, csv, sys

rows = list(csv.reader(open(sys.argv[1])))
head = next((i for i, r in enumerate(rows) if "Source" in r and "Address" in r), None)
if head is None:
    sys.exit("ncu_sass: no SASS table in " + sys.argv[1])
kernel = rows[0][1] if rows and len(rows[0]) > 1 else "?"
col = {name: i for i, name in enumerate(rows[head])}
body = [r for r in rows[head + 1:] if len(r) == len(col)]

def num(r, name):
    try:
        return float(r[col[name]].replace(",", "") or 0)
    except (KeyError, ValueError):
        return 0.0

def opcode(src):
    words = src.split()
    if words and words[0].startswith("@"):
        words = words[1:]
    return words[0].split(".")[0] if words else ""

print(f"kernel: {kernel}\n")
mix = collections.Counter()
for r in body:
    mix[opcode(r[col["Source"]])] += num(r, "Instructions Executed")
total = sum(mix.values()) or 1
print("| opcode | executed (warp instructions) | share |\n|---|---:|---:|")
for op, n in [(op, n) for op, n in mix.most_common() if n > 0][:16]:
    print(f"| {op} | {n:.0f} | {100 * n / total:.1f}% |")
print("\n| global load | executed | L2 sectors an execution |\n|---|---:|---:|")
seen = collections.Counter()
for r in body:
    src = r[col["Source"]].strip()
    if opcode(src) in ("LDG", "LDGSTS", "UTMALDG") and num(r, "Instructions Executed") > 0:
        key = " ".join(src.split()[:2]) if src.startswith("@") else src.split()[0]
        n = num(r, "Instructions Executed")
        sectors = num(r, "L2 Theoretical Sectors Global")
        seen[(key, round(sectors / n, 1) if n else 0.0)] += n
for (key, per), n in seen.most_common(12):
    print(f"| `{key}` | {n:.0f} | {per} |")
stalls = collections.Counter()
for name in col:
    if name.startswith("stall_") and "Not Issued" not in name:
        stalls[name[6:]] = sum(num(r, name) for r in body)
samples = sum(stalls.values()) or 1
print("\n| stall reason | share of samples |\n|---|---:|")
for reason, n in stalls.most_common(8):
    print(f"| {reason} | {100 * n / samples:.1f}% |")
print("\n| stall samples | instruction |\n|---:|---|")
top = sorted(body, key=lambda r: -num(r, "Warp Stall Sampling (All Samples)"))[:12]
for r in top:
    samples_at = num(r, "Warp Stall Sampling (All Samples)")
    print(f"| {samples_at:.0f} | `{r[col['Source']].strip()[:72]}` |")
PY
