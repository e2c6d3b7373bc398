#!/usr/bin/env bash
# Verifies, joins and unpacks the parts made by scripts/wheelhouse.sh, with the node's own
# Python (standard library only), then prints the PYTHONPATH line to use (docs/cluster.md):
#   scripts/install-wheelhouse.sh PART... --target DIR
set -euo pipefail
src=${BASH_SOURCE[0]}
[[ $src == */* ]] && here=${src%/*} || here=.   # no dirname: a bare node may lack coreutils
exec "${PYTHON:-python3}" "$here/wheelhouse.py" install "$@"
