# The two commands of the README: `make demo` (set up, start the daemon, log a demo
# training, show it) and `make test` (set up, then every check CI runs).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint typecheck contracts pytest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/trackd demo

lint: $(STAMP)
	$(BIN)/ruff check trackd tests bench
	$(BIN)/ruff format --check trackd tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

contracts: $(STAMP)
	$(BIN)/lint-imports

pytest: $(STAMP)
	$(BIN)/pytest

test: lint typecheck contracts pytest

bench: $(STAMP)
	$(BIN)/python bench/eventlog_append.py
	$(BIN)/python bench/views_bench.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/sched_floor.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
