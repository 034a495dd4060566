#!/usr/bin/env bash
# shellcheck disable=SC2016  # backticks in '...' are Markdown code spans, not substitutions
# kernels/cuda/bench/ncu_sass.sh without a GPU: its arguments are checked before ncu is looked
# for, and its SASS summary is right on a synthetic ncu source-page table (a stand-in `ncu` on
# PATH writes the report file and prints the table). The capture itself needs the H200.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work=${1:-$(mktemp -d)}
mkdir -p "$work/bin"
script="$root/kernels/cuda/bench/ncu_sass.sh"
fails=0 passed=0
ok() { echo "ok   $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1"; fails=$((fails + 1)); }

refused() {  # name, message fragment, arguments...
  local name=$1 want=$2
  shift 2
  local out rc
  out=$(PATH="$work/bin:$PATH" OUT="$work/out" bash "$script" "$@" 2>&1 </dev/null)
  rc=$?
  if [ $rc -eq 0 ] || ! grep -qF -- "$want" <<<"$out"; then
    fail "$name: exit code $rc, message:"; echo "$out" | tail -3; return
  fi
  ok "$name: $(grep -F -- "$want" <<<"$out" | head -1 | cut -c1-100)"
}

# The stand-in ncu: `-o REP` makes REP.ncu-rep; `-i REP --page source` prints the table: a
# 32-lane load of whole lines (16 sectors) executed 100 times, one of half lines (8) 50 times.
# With NCU_ARGS_LOG set it appends each command line there.
cat >"$work/bin/ncu" <<'NCU'
#!/usr/bin/env bash
[ -n "${NCU_ARGS_LOG:-}" ] && echo "$*" >>"$NCU_ARGS_LOG"
while [ $# -gt 0 ]; do
  case "$1" in
    -o) : >"$2.ncu-rep"; exit 0 ;;
    -i) cat <<'CSV'
"Kernel Name","fake_flash_kernel",
"Address","Source","Warp Stall Sampling (All Samples)","Instructions Executed","L2 Theoretical Sectors Global","stall_long_sb","stall_barrier","stall_selected"
"0x10","      LDGSTS.E.BYPASS.128 [R4], desc[UR4][R2.64], P0","30","100","1600","25","0","5"
"0x20","      LDG.E.128 R8, desc[UR4][R6.64]","12","50","400","10","0","2"
"0x30","      HMMA.16816.F32.BF16 R12, R16, R20, R12","3","300","0","0","0","3"
"0x40","      BAR.SYNC.DEFER_BLOCKING 0x0","20","50","0","0","20","0"
"0x50","@!P0  BRA 0x10","0","0","0","0","0","0"
CSV
      exit 0 ;;
  esac
  shift
done
NCU
chmod +x "$work/bin/ncu"

refused no-args "usage"
refused bad-kind "usage" gpu 1.5B:262144:1
refused bad-shape "usage" sdpa 1.5B:262144
refused ours-without-bench "ours needs RESA_BENCH" ours 1.5B:262144:1 "$work/none"

out=$(PATH="$work/bin:$PATH" OUT="$work/out" bash "$script" ours 1.5B:262144:1 /bin/true 2>&1)
rc=$?
md="$work/out/ncu_sass_ours.md"
if [ $rc -ne 0 ] || [ ! -f "$md" ]; then
  fail "summary: exit code $rc"; echo "$out" | tail -5
else
  check() {  # name, line fragment that the summary must hold
    if grep -qF -- "$2" "$md"; then ok "summary $1: $2"; else fail "summary $1: no '$2'"; fi
  }
  check kernel "kernel: fake_flash_kernel"
  check mix "| HMMA | 300 | 60.0% |"
  check whole-lines '| `LDGSTS.E.BYPASS.128` | 100 | 16.0 |'
  check half-lines '| `LDG.E.128` | 50 | 8.0 |'
  check stalls "| long_sb | 53.8% |"
  if grep -qF "| BRA |" "$md"; then fail "summary: an opcode never executed listed"; fi
  check top-stall '| 30 | `LDGSTS.E.BYPASS.128 [R4], desc[UR4][R2.64], P0` |'
  if grep -qF "BRA" <(sed -n '/global load/,/stall reason/p' "$md"); then
    fail "summary: a branch listed as a load"
  else
    ok "summary lists loads only"
  fi
fi
# SDPA's capture runs the baseline on the model's heads (model_heads.sh): named and HQ-HKV-D.
for shape in 7B:32768:8=7B:28:4:128:32768:8 8-2-64:4096:1=8-2-64:8:2:64:4096:1; do
  log="$work/ncu_args_${shape%%=*}"
  : >"$log"
  NCU_ARGS_LOG="$log" PATH="$work/bin:$PATH" OUT="$work/out" bash "$script" sdpa "${shape%%=*}" \
    >/dev/null 2>&1
  if grep -qF -- "--shape ${shape#*=} " "$log"; then
    ok "sdpa capture of ${shape%%=*}: --shape ${shape#*=}"
  else
    fail "sdpa capture of ${shape%%=*}: no '--shape ${shape#*=}' in: $(head -1 "$log")"
  fi
done
echo "$passed passed, $fails failed"
[ $fails -eq 0 ]
