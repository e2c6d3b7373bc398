#!/usr/bin/env bash
# README's demo command: build or reuse the environment, then run the built-in demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
exec .venv/bin/maedfer demo "$@"
