#!/usr/bin/env bash
# One command from a fresh clone to generated text: dependencies, Release build, the default
# model, and `resa generate` on a sample prompt. Fast when run again (nothing re-downloaded,
# incremental build). Arguments are passed to `resa generate` (e.g. -p "your prompt").
set -euo pipefail
source "$(dirname "$0")/common.sh"
"$RESA_ROOT/scripts/install_deps.sh"
"$RESA_ROOT/scripts/build.sh"
"$RESA_ROOT/scripts/fetch_model.sh"
if [ $# -eq 0 ]; then
  set -- --chat -p "Explain in three sentences why the sky is blue." -n 128
fi
log "build/bin/resa generate --model default $*"
exec "$RESA_ROOT/build/bin/resa" generate --model default "$@"
