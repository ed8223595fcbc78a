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

## harden: hostile-client runs at full size (2,000 slow connections vs a 1,024-file limit)
harden: $(STAMP) system-deps
	$(VENV)/bin/pytest -m harden -s tests/network

## docs: the documentation site in site/ (mkdocs --strict: warnings, broken links or anchors fail)
.PHONY: docs   # a target named like the docs/ folder: always run it
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

## tck: the official A2A conformance kit (a2aproject/a2a-tck at TCK_REF, fetched into .tck,
## never committed) against a node hosting an echo agent; CATEGORY=mandatory|...|all
TCK_REPO ?= https://github.com/a2aproject/a2a-tck
TCK_REF  ?= 410ba92
TCK_DIR  ?= .tck
tck: $(STAMP)
	test -d $(TCK_DIR)/.git || git clone -q $(TCK_REPO) $(TCK_DIR)
	git -C $(TCK_DIR) checkout -q $(TCK_REF)
	test -x $(TCK_DIR)/.venv/bin/python || ($(PYTHON) -m venv $(TCK_DIR)/.venv && $(TCK_DIR)/.venv/bin/pip install -q -e $(TCK_DIR))
	$(PY) -m tests.network.a2a.tck --tck-dir $(TCK_DIR) --category $(or $(CATEGORY),all)

## bench-scale: what 10, 100 and 1,000 idle agents cost on memory, SQLite and NATS (issue 18)
bench-scale: $(STAMP) system-deps
	$(PY) -m benchmarks.run --only scale

clean:
	rm -rf $(VENV) .aos .pytest_cache .mypy_cache .ruff_cache test-artifacts .tck site
