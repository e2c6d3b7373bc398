#!/usr/bin/env bash
# Make ./.venv ready to run maedfer and its tests, from nothing if need be.
#
# Two layers:
# - the dependencies (~6 GB: the CUDA build of torch) live outside the clone, in one venv under
#   $MAEDFER_VENV_CACHE (default ~/.cache/maedfer/venvs), keyed by the hash of pyproject.toml,
#   constraints.txt and the Python version. It holds the dependencies only, never maedfer, so
#   any number of clones share it. Built once per key (minutes), under a lock.
# - ./.venv is this clone's own venv, a real folder made in seconds: no pip of its own, a .pth
#   file that adds the cached venv's site-packages, and maedfer installed editable from this
#   clone. .venv/bin/python, .venv/bin/maedfer (and the tools: pytest, ruff, ...) always run
#   this clone's code, whatever other clones set up. It is remade when the key changes, when
#   the clone moves, or when it does not resolve maedfer to this clone.
#
# Building a new key removes the cached venvs that no clone has set up from in
# $MAEDFER_VENV_KEEP_DAYS days (default 14); keys in use stay.
#
# Usage: scripts/setup-venv.sh [--print-cache]
#   --print-cache  print the path of the cached venv for this clone and change nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd -P)

python=${PYTHON:-python3}
cache=$(realpath -m "${MAEDFER_VENV_CACHE:-$HOME/.cache/maedfer/venvs}")
keep_days=${MAEDFER_VENV_KEEP_DAYS:-14}
extras=(dev gpu)

pyver=$("$python" -c 'import sys; print(sys.implementation.cache_tag, sys.version)')
# The layout line keeps a cached venv of the old layout (maedfer installed in it) from matching.
key=$({
    echo "layout: dependencies only; extras: ${extras[*]}; python: $pyver"
    cat pyproject.toml constraints.txt
} | sha256sum | cut -c1-16)
venv="$cache/$key"

if [ "${1:-}" = "--print-cache" ]; then
    echo "$venv"
    exit 0
fi

# The cached venv of the dependencies -----------------------------------------------------------

# The newest use of a cached venv: our stamp, its completion, or a pip run into it (older
# versions of this script re-installed maedfer into it on every call).
recently_used() {
    [ -n "$(find "$1" "$1/.last-used" "$1/.complete" "$1"/lib/python*/site-packages \
        -maxdepth 0 -mtime "-$keep_days" 2>/dev/null)" ]
}

remove_unused_keys() {
    local old
    for old in "$cache"/*; do
        [ -d "$old" ] && [ ! -L "$old" ] && [ "$old" != "$venv" ] || continue
        [[ $(basename "$old") =~ ^[0-9a-f]{16}$ ]] && [ -f "$old/pyvenv.cfg" ] || continue
        recently_used "$old" && continue
        # Not while another setup builds or holds it.
        (flock -n 8 || exit 1; echo "setup: removing $old (unused for $keep_days days)" >&2
            rm -rf "$old" "$old.lock") 8>"$old.lock" || true
    done
}

build_cache() {
    echo "setup: building the dependency environment $venv (first run for this" \
        "pyproject/constraints/Python; minutes)" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
    # The dependencies, not the project: build-system requires (for the editable installs into
    # each clone's .venv), dependencies and the extras, read from pyproject.toml.
    "$venv/bin/python" - "${extras[@]}" >"$venv/dependencies.txt" <<'EOF'
import sys
try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib
with open("pyproject.toml", "rb") as f:
    meta = tomllib.load(f)
reqs = list(meta["build-system"]["requires"]) + list(meta["project"]["dependencies"])
for extra in sys.argv[1:]:
    reqs += meta["project"]["optional-dependencies"][extra]
print("\n".join(reqs))
EOF
    "$venv/bin/python" -m pip install -q -c constraints.txt -r "$venv/dependencies.txt"
    if "$venv/bin/python" -m pip show -q maedfer >/dev/null 2>&1; then
        echo "setup: maedfer got installed into the shared $venv; it must hold dependencies only" >&2
        exit 1
    fi
    touch "$venv/.complete"
    remove_unused_keys
}

mkdir -p "$cache"
if [ ! -f "$venv/.complete" ]; then
    exec 9>"$venv.lock"
    flock 9  # another clone may be building the same key: wait for it
    [ -f "$venv/.complete" ] || build_cache
    exec 9>&-
else
    echo "setup: reusing the dependencies in $venv" >&2
fi
touch "$venv/.last-used"

# This clone's .venv ----------------------------------------------------------------------------

stamp=".venv/maedfer-setup"
want="deps $venv
clone $repo"

# True when .venv resolves maedfer to this clone and torch to the cached venv (checked from /,
# so that the current folder does not stand in for the editable install).
light_ok() {
    [ -d .venv ] && [ ! -L .venv ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
        && [ "$(cd / && "$repo/.venv/bin/python" -c '
import importlib.util as u, sys
print(u.find_spec("maedfer").origin, u.find_spec("torch").origin.startswith(sys.argv[1]))
' "$venv/" 2>/dev/null)" = "$repo/maedfer/__init__.py True" ]
}

make_light() {
    if [ -L .venv ]; then
        rm -f .venv  # the old layout's link to the shared venv: the link goes, its target stays
    elif [ -e .venv ]; then
        if [ ! -f "$stamp" ]; then
            echo "setup: ./.venv exists and was not made by this script; remove it first" >&2
            exit 1
        fi
        rm -rf .venv
    fi
    echo "setup: making ./.venv (this clone's maedfer on the shared dependencies)" >&2
    "$venv/bin/python" -m venv --without-pip .venv
    .venv/bin/python - "$venv" <<'EOF'
import os, sys, sysconfig
from pathlib import Path

deps, here = Path(sys.argv[1]), Path(sys.prefix)
where = {"base": str(deps), "platbase": str(deps)}
deps_sites = sorted({sysconfig.get_path(k, vars=where) for k in ("purelib", "platlib")})
# site.addsitedir, not a bare path line: the cached site-packages' own .pth files run too.
lines = [f"import site; site.addsitedir({s!r})" for s in deps_sites]
(Path(sysconfig.get_path("purelib")) / "_maedfer_deps.pth").write_text("\n".join(lines) + "\n")

# The cached venv's console scripts (pytest, pip, ...) again with this venv's python, which sees
# this clone's maedfer; binaries (ruff) are linked.
old_python, new_python = f"{deps}/bin/python".encode(), f"{here}/bin/python".encode()
for src in sorted((deps / "bin").iterdir()):
    dst = here / "bin" / src.name
    if src.name.startswith(("python", "activate", "Activate")) or os.path.lexists(dst):
        continue
    if src.is_symlink() or not src.is_file() or not os.access(src, os.X_OK):
        continue
    text = src.read_bytes()
    head = text.split(b"\n", 3)  # the shebang, or a /bin/sh line that execs python
    if text.startswith(b"#!") and any(old_python in line for line in head[:3]):
        head[:3] = [line.replace(old_python, new_python) for line in head[:3]]
        dst.write_bytes(b"\n".join(head))
        dst.chmod(0o755)
    elif text.startswith(b"\x7fELF"):
        dst.symlink_to(src)
EOF
    # pip comes from the cached venv; the install (and maedfer's console script) lands in .venv.
    # Its output (setuptools' notice on editable installs) only shows when it fails.
    local out
    if ! out=$(.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . 2>&1); then
        echo "$out" >&2
        exit 1
    fi
    echo "$want" >"$stamp"
    if ! light_ok; then
        echo "setup: ./.venv does not resolve maedfer to $repo or torch to $venv" >&2
        exit 1
    fi
}

if light_ok; then
    echo "setup: reusing ./.venv" >&2
else
    make_light
fi
