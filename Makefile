# The two commands: `make run` and `make test`. Both create .venv and install on first use,
# and reinstall when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
COMPILED := $(VENV)/.compiled-stamp
export MLFLOW_MODEL_CATALOG_URI ?=
export MLFLOW_DISABLE_TELEMETRY ?= true

STAGE ?= dev
NPM_STAMP := node_modules/.installed-stamp
TOOLS := .tools
TOOLS_STAMP := $(TOOLS)/.installed-stamp
NODE_STAMP := $(TOOLS)/.node-stamp
OSLS := node_modules/.bin/osls

TEST_WORKERS ?= 3

# LangGraph's own `langgraph dev`, in a venv of its own (its grpcio, protobuf and OpenTelemetry
# pins are not the project's): what `make compare` and `make bench` measure agentworker against.
LG_VENV := .venv-langgraph
LG_STAMP := $(LG_VENV)/.installed-stamp

.PHONY: run test pytest lint bench compare demo reliability clean package validate deploy remove

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "agentworker needs Python 3.11+; try: make PYTHON=python3.12 ..." >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# setuptools tells every editable install of a multi-root layout (the examples ship as
	@# packages) to mind same-named folders: information, not a problem here.
	@# pip compiles one file at a time (two thirds of a fresh install): it does not; the
	@# dependencies are byte-compiled on all cores by $(COMPILED), which `make test` runs
	@# beside the packaging (mostly one core) instead of before it.
	PYTHONWARNINGS='ignore:::setuptools.command.editable_wheel' \
		$(BIN)/python -m pip install -q --no-compile -e '.[local,dev]'
	@touch $(STAMP)

# Files pip would not compile either are left to import. Needed where PYTHONDONTWRITEBYTECODE
# is set: every process would compile every import again.
$(COMPILED): $(STAMP)
	@$(BIN)/python -m compileall -q -j 0 $$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') >/dev/null || true
	@touch $@

run: $(COMPILED)
	$(BIN)/agentworker serve

# The parts of `make test` run at once (the installs too, on a fresh clone): lint, validate, the
# dependencies' byte-compiling, and pytest once the stack is packaged (a test reads the
# template), its tests spread over
# TEST_WORKERS processes (pytest-xdist; conftest.py keeps a module's shared fixture in one
# worker). -k: every part runs to its end and reports; any failure fails `make test`.
# Each part's output is printed whole, when it ends.
test:
	@$(MAKE) --no-print-directory -j4 -k --output-sync=target lint validate pytest $(COMPILED)

# PYTHONDONTWRITEBYTECODE (set on some machines) would make every process the tests start (servers,
# CLI calls, xdist workers) compile our modules again, and pytest rewrite every test module
# again: measured here, about a tenth of the tests' CPU. Cleared for the tests only.
pytest: $(STAMP) package
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -n $(TEST_WORKERS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

$(LG_STAMP): bench/langgraph-dev-requirements.txt
	@test -x $(LG_VENV)/bin/python || $(PYTHON) -m venv $(LG_VENV)
	$(LG_VENV)/bin/python -m pip install -q --disable-pip-version-check -r bench/langgraph-dev-requirements.txt
	@touch $@

bench: $(COMPILED) $(LG_STAMP)
	$(BIN)/python -m bench

# The Agent Server API tests that both servers pass, run against `langgraph dev` (make test
# runs them, and agentworker's own, against `agentworker serve`).
compare: $(STAMP) $(LG_STAMP)
	$(BIN)/python -m pytest tests/functional/test_langgraph_sdk.py --sdk-server=langgraph-dev

demo: $(COMPILED)
	$(BIN)/agentworker demo

# The reliability suite at full size (make test runs it reduced): writes docs/RELIABILITY.md.
reliability: $(COMPILED)
	$(BIN)/python -m reliability --size full --out docs/RELIABILITY.md

# Deployment: the Serverless CLI (osls) and asl-validator pinned in package-lock.json, run by
# the Node.js that the tools venv installs from PyPI, and the validators in that venv.
# `make package` and `make validate` need no AWS account, no Docker and no network.
# Node.js goes in first, so that npm and the packaging need not wait for the validators.
$(NODE_STAMP): deploy/node-requirements.txt
	@test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q --disable-pip-version-check -r deploy/node-requirements.txt
	@touch $@

$(NPM_STAMP): package.json package-lock.json $(NODE_STAMP)
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(TOOLS_STAMP): deploy/tools-requirements.txt $(NODE_STAMP)
	$(TOOLS)/bin/python -m pip install -q --disable-pip-version-check -r deploy/tools-requirements.txt
	@touch $@

package: $(STAMP) $(NPM_STAMP)
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" $(BIN)/python -m deploy.package --stage $(STAGE)

validate: package $(TOOLS_STAMP)
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" $(BIN)/python -m deploy.validate --stage $(STAGE)

deploy: validate
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" $(OSLS) deploy --stage $(STAGE) --package .serverless

remove: $(NPM_STAMP)
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" $(OSLS) remove --stage $(STAGE)

clean:
	rm -rf $(VENV) $(LG_VENV) $(TOOLS) node_modules build .serverless .agentworker .mypy_cache .ruff_cache .pytest_cache
