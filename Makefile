# headrace: `make run` runs the embedded server; `make test` installs what the tests need and runs them all.

PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.13 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run demo test lint typecheck pytest bench test-deps clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "headrace needs Python 3.11+"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,bench,science]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/headrace up

demo: $(STAMP)
	$(BIN)/headrace demo

test-deps: $(STAMP)
	scripts/install-test-deps.sh
	scripts/install-kafka.sh

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: test-deps
	$(BIN)/pytest

test: lint typecheck pytest

bench: test-deps
	$(BIN)/python bench/storage.py
	$(BIN)/python bench/events.py
	$(BIN)/python bench/kafka_relay.py
	$(BIN)/python bench/functions.py
	$(BIN)/python bench/xfel.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
