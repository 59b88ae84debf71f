#!/usr/bin/env bash
# Creates .venv with a Python >= 3.12, installs SOP with every role (`.[dev]`: the robot, learner and sim extras
# plus the test and lint tools; README.md "Installing one role"), and generates the gRPC code.
# Idempotent: re-running after a successful setup only re-installs when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${SOP_VENV:-.venv}
STAMP="$VENV/.sop-installed"

python_ok() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1
}

find_python() {
    local candidate
    # 1. Explicit choice.
    if [ -n "${SOP_PYTHON:-}" ] && python_ok "$SOP_PYTHON"; then echo "$SOP_PYTHON"; return; fi
    # 2. Interpreters on PATH (skipping pyenv shims, which fail when the version is not selected).
    for candidate in python3.13 python3.12 python3; do
        local path
        path=$(command -v "$candidate" 2>/dev/null || true)
        if [ -n "$path" ] && [[ "$path" != */shims/* ]] && python_ok "$path"; then echo "$path"; return; fi
    done
    # 3. pyenv-installed versions, newest first.
    local root="${PYENV_ROOT:-$HOME/.pyenv}"
    if command -v pyenv >/dev/null 2>&1; then root=$(pyenv root); fi
    if [ -d "$root/versions" ]; then
        for candidate in $(ls -1 "$root/versions" | grep -E '^3\.(1[2-9])(\.[0-9]+)?$' | sort -t. -k1,1n -k2,2n -k3,3n -r); do
            if python_ok "$root/versions/$candidate/bin/python3"; then echo "$root/versions/$candidate/bin/python3"; return; fi
        done
    fi
    # 4. uv-managed interpreters.
    if command -v uv >/dev/null 2>&1; then
        candidate=$(uv python find '>=3.12' 2>/dev/null || true)
        if [ -n "$candidate" ] && python_ok "$candidate"; then echo "$candidate"; return; fi
    fi
    return 1
}

if [ ! -x "$VENV/bin/python" ] || ! python_ok "$VENV/bin/python"; then
    if ! PY=$(find_python); then
        echo "SOP needs Python >= 3.12 and found none (PATH, pyenv, uv): install one, e.g. 'pyenv install 3.12' or 'uv python install 3.12', or set SOP_PYTHON=/path/to/python3.12." >&2
        exit 1
    fi
    echo "setup: creating $VENV with $PY ($("$PY" --version))"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
fi

if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    echo "setup: installing sop and its dependencies into $VENV (the first time downloads torch, ~3 GB)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e '.[dev]'
    touch "$STAMP"
fi

# MuJoCo renders off-screen through EGL (Mesa on the CPU). Debian/Ubuntu images without it get it from apt.
if ! ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1'; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing Mesa EGL for off-screen rendering"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri >/dev/null
    else
        echo "setup: warning: libEGL.so.1 not found; camera rendering needs Mesa EGL (apt-get install libegl1 libegl-mesa0)" >&2
    fi
fi

# The operator console's browser test drives Debian's chromium through Playwright (which cannot download one).
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing chromium for the console's browser test"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "setup: warning: chromium not found; the console's browser test is skipped (apt-get install chromium)" >&2
    fi
fi

"$VENV/bin/python" scripts/generate_protos.py
