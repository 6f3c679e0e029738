# MarketSwarm: the two commands are `make run` and `make test`; the rest is for developers.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Keep the repository root off sys.path, so `import agents` can never load our folder (a bare `agents` is also the name of a PyPI package).
export PYTHONSAFEPATH := 1
PYTEST_ARGS ?=

.PHONY: all install run test test-all test-integration lint format typecheck bench diagram vendor clean

all: lint typecheck test

# Strict editable installs link each module: a new module needs a reinstall, which a change of a
# package directory's mtime (a file added or removed) triggers.
PKG_DIRS := topology schemas ops agents agents/sources agents/normalize agents/hydrate agents/calc agents/publish agents/derive agents/gateway agents/gateway/static agents/gateway/static/js agents/gateway/static/vendor agents/gateway/static/vendor/echarts agents/gateway/static/vendor/swagger-ui

$(STAMP): pyproject.toml $(PKG_DIRS)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python >= 3.11 is required"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' --config-settings editable_mode=strict
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/marketswarm run

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-integration: $(STAMP)
	$(BIN)/python -m pytest -m "integration and not slow and not browser" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(STAMP)
	$(BIN)/mypy -p marketswarm.schemas -p marketswarm.topology -p marketswarm.agents -p marketswarm.ops

# The benchmark is test rig (tests/bench/), run by pytest for its imports; BENCH_SUITES=runtime,e2e picks suites.
bench: $(STAMP)
	BENCH_SUITES="$(BENCH_SUITES)" $(BIN)/python -m pytest tests/bench/run.py -q -s -p no:cacheprovider --timeout=0 -W default

diagram: $(STAMP)
	$(BIN)/marketswarm topology --mermaid
	$(BIN)/marketswarm topology --layers

# The dashboard's and the API docs' browser libraries, at the versions pinned in ops/vendor/pins.json
# (`python ops/vendor/vendor.py --latest` moves the pins): fetched from the npm registry, checked
# against its integrity hash, unpacked with their licenses into agents/gateway/static/vendor.
vendor:
	$(PYTHON) ops/vendor/vendor.py

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .bench
