#!/usr/bin/env bash
# Make ./.venv ready to run maedfer and its tests, from nothing if need be.
#
# A full environment is ~6 GB (the CUDA build of torch), so it lives outside the clone, in
# $MAEDFER_VENV_CACHE (default ~/.cache/maedfer/venvs), keyed by the hash of pyproject.toml +
# constraints.txt: repeated runs and fresh clones reuse it, a change of either file builds a new
# one and removes the old ones. ./.venv is a symlink to it; the package itself is (re)installed
# editable from this clone on every call, which takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
cache=${MAEDFER_VENV_CACHE:-$HOME/.cache/maedfer/venvs}
key=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
venv="$cache/$key"

mkdir -p "$cache"
if [ ! -f "$venv/.complete" ]; then
    echo "setup: building the environment $venv (first run for this pyproject/constraints)" >&2
    rm -rf "$venv"
    # Old keys are dead weight (6 GB each).
    find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -exec rm -rf {} +
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
    "$venv/bin/python" -m pip install -q -c constraints.txt -e '.[dev,gpu]'
    touch "$venv/.complete"
else
    echo "setup: reusing $venv" >&2
fi

if [ -e .venv ] && [ ! -L .venv ]; then
    echo "setup: ./.venv exists and is not a link to the cache; remove it first" >&2
    exit 1
fi
ln -sfn "$venv" .venv
# Point the editable install at this clone (the cached venv may have been made by another one).
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
