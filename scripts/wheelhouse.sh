#!/usr/bin/env bash
# Packs what maedfer needs on a GPU node without a package registry into parts of a limited
# size (docs/cluster.md): scripts/wheelhouse.sh --out DIR [--python 3.12] [--from-env] ...
# Runs with this clone's .venv when there is one (--from-env packs that environment).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python=${PYTHON:-python3}
[ -x "$here/../.venv/bin/python" ] && python="$here/../.venv/bin/python"
exec "$python" "$here/wheelhouse.py" build "$@"
