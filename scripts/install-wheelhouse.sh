#!/usr/bin/env bash
# Verifies, joins and unpacks the parts made by scripts/wheelhouse.sh, with the node's own
# Python (standard library only), then prints the PYTHONPATH line to use (docs/cluster.md):
#   scripts/install-wheelhouse.sh PART... --target DIR
set -euo pipefail
exec "${PYTHON:-python3}" "$(cd "$(dirname "$0")" && pwd)/wheelhouse.py" install "$@"
