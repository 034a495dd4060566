# Sourced by the other scripts: paths and small helpers.
RESA_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESA_MODEL_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/resa/models"
RESA_VENV="${RESA_VENV:-$RESA_ROOT/.venv}"
RESA_JOBS="${RESA_JOBS:-$(nproc)}"

log() { printf '\033[1m[resa]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[resa] error:\033[0m %s\n' "$*" >&2; exit 1; }

# The pinned sha256 of a model file (models/SHA256SUMS).
pinned_sha256() {
  awk -v f="$1" '$2 == f { print $1 }' "$RESA_ROOT/models/SHA256SUMS"
}

# verify_sha256 FILE [NAME]: compares FILE with the pin for NAME (default: FILE's base name).
verify_sha256() {
  local want got name
  name=${2:-$(basename "$1")}
  want=$(pinned_sha256 "$name")
  [ -n "$want" ] || die "no pinned sha256 for $name in models/SHA256SUMS"
  got=$(sha256sum "$1" | cut -d' ' -f1)
  [ "$got" = "$want" ] || { log "sha256 mismatch for $1: got $got, pinned $want"; return 1; }
}

# A virtual environment for pip (downloads from PyPI; Python test tools). Debian's own python3
# has no pip and refuses system-wide installs, so everything pip does happens in here.
ensure_venv() {
  if [ ! -x "$RESA_VENV/bin/pip" ]; then
    log "creating a Python virtual environment in $RESA_VENV"
    python3 -m venv "$RESA_VENV" || die "python3 -m venv failed (apt-get install python3-venv)"
  fi
}
