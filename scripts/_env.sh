# Shared by scripts/demo and scripts/test: a Python 3.11+ virtualenv in .venv with mqttpush installed.
# Usage: . scripts/_env.sh EXTRAS   (EXTRAS: "" or "[test]")
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: mqttpush needs Python 3.11 or newer as $PY (set PYTHON=...)" >&2
    exit 2
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    # Install Debian packages that are missing (CI runs as root; elsewhere sudo asks).
    local missing=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> installing ${missing[*]} (apt-get)"
        as_root apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || {
            as_root apt-get update -q >/dev/null && as_root apt-get install -y -q "${missing[@]}" >/dev/null
        }
    fi
}

if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    if ! "$PY" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        apt_install python3-venv
        "$PY" -m venv .venv
    fi
fi
echo "==> installing mqttpush${1:-} into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${1:-}"
export PATH="$PWD/.venv/bin:$PATH"
