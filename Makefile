# The two set-up commands of README.md: each builds or reuses the environment first.
.PHONY: venv test demo lint bench

venv:
	bash scripts/setup-venv.sh

test: venv
	bash scripts/fetch-test-media.sh || echo "test media unavailable: the tests that need it skip" >&2
	.venv/bin/python -m pytest -q --timeout 600

demo: venv
	.venv/bin/maedfer profile model

lint: venv
	.venv/bin/ruff check .

bench: venv
	.venv/bin/python bench/model_speed.py
