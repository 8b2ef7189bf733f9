# The two commands: `make run` and `make test`. Both create .venv and install on first use,
# and reinstall when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export MLFLOW_MODEL_CATALOG_URI ?=
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: run test lint bench demo clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "agentworker needs Python 3.11+; try: make PYTHON=python3.12 ..." >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[local,dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/agentworker serve

test: $(STAMP) lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

demo: $(STAMP)
	$(BIN)/agentworker demo

clean:
	rm -rf $(VENV) .agentworker .mypy_cache .ruff_cache .pytest_cache
