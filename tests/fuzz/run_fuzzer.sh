#!/usr/bin/env bash
# Runs one libFuzzer target briefly over its seed corpus (a copy, so the repo stays clean).
set -euo pipefail
bin=$1 corpus=$2 work=$3
seconds=${RESA_FUZZ_SECONDS:-30}
rm -rf "$work"
mkdir -p "$work/corpus" "$work/artifacts"
cp -r "$corpus"/. "$work/corpus/" 2>/dev/null || true
"$bin" -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -timeout=10 \
  -artifact_prefix="$work/artifacts/" "$work/corpus"
