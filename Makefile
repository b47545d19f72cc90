# The two commands a newcomer needs: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

## Main job: emulator + full sync + clock advance + incremental sync + at-risk report (SQLite store).
demo: $(STAMP)
	$(BIN)/python -m integration_tests.demo

## Lint, types and the whole test suite (starts PostgreSQL on 127.0.0.1 for the store tests).
test: $(STAMP) lint typecheck
	scripts/ensure-system-deps.sh
	scripts/with-postgres.sh $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_emulator.py
	$(BIN)/python benchmarks/bench_source.py
	$(BIN)/python benchmarks/bench_destination.py
	$(BIN)/python benchmarks/bench_webhooks.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
