# The README's first two commands are `make demo` and `make test`; each sets up what it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck check bench bench-quick soak system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

## demo: the multi-agent walk-through on the embedded SQLite default
demo: $(STAMP)
	$(PY) -m AgentOperatingSystem.messaging.demo

## system-deps: nats-server and chromium from Debian when missing (the tests need both)
system-deps:
	bash scripts/install-system-deps.sh

## test: lint, type-check and the whole test suite (memory, sqlite and nats engines)
test: $(STAMP) system-deps lint
	$(VENV)/bin/pytest

## lint: ruff, mypy --strict, the layer contracts (import-linter) and the shape (sizes, cycles)
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) scripts/shape.py

## bench: every benchmark scenario beside its baseline (table + JSON lines)
bench: $(STAMP) system-deps
	$(PY) -m benchmarks.run

bench-quick: $(STAMP) system-deps
	$(PY) -m benchmarks.run --quick

## soak: long load runs, kept out of the default test run
soak: $(STAMP) system-deps
	$(VENV)/bin/pytest -m slow tests/soak

clean:
	rm -rf $(VENV) .aos .pytest_cache .mypy_cache .ruff_cache test-artifacts
