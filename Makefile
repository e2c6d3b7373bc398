# Shortcuts for the scripts README.md names (make is optional; the scripts are the interface).
.PHONY: venv test demo lint
venv:
	bash scripts/setup-venv.sh
test:
	bash scripts/test.sh
demo:
	bash scripts/demo.sh
lint: venv
	.venv/bin/ruff check .
