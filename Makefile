# headrace: `make run` runs the embedded server; `make check` is the fast tier (lint, types, the in-process
# tests: under a minute); `make test` installs what the tests need and runs them all.

PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.13 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run demo check test lint typecheck pytest bench test-deps clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "headrace needs Python 3.11+"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,bench,science,postgresql,kafka]'
	touch $(STAMP)

# functions run sandboxed by bubblewrap (Debian's bubblewrap): installed here if missing
run: $(STAMP)
	@command -v bwrap >/dev/null || bash -c 'source scripts/apt.sh && apt_install run bubblewrap'
	$(BIN)/headrace up

demo: $(STAMP)
	$(BIN)/headrace demo

test-deps: $(STAMP)
	scripts/install-test-deps.sh
	scripts/install-kafka.sh
	scripts/install-postgres.sh >/dev/null

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

# The suite runs twice, side by side, each on two xdist workers: on SQLite, and on PostgreSQL (a throwaway
# cluster per worker, tests/support/pg_harness.py). Four streams keep both cores busy while tests wait on servers:
# 9.2 min on this 2-core machine (SQLite 655 tests in 9.2 min, PostgreSQL 404 in 9.0 min; 10 min from a fresh
# clone with the venv), 14.5 min with two CPU-bound processes beside it (stress-ng --cpu 2; 15.9 min from a fresh
# clone): the suite is CPU-bound, so running the two one after the other takes as long. The SQLite run prints
# as it goes, the PostgreSQL run when it is done (its summary last);
# either failing fails the target. `make pytest PYTEST_ARGS=` runs each without xdist.
# Each run has its own --basetemp: pytest's shared /tmp/pytest-of-$USER keeps only the last three sessions, so
# other pytest sessions of the same user (another checkout's tests) would delete a running suite's servers' data.
PYTEST_ARGS ?= -n 2 --dist loadfile
pytest: test-deps
	@log=$$(mktemp -t headrace-pytest-postgresql.XXXXXX); \
	tmp=$$(mktemp -d -t headrace-pytest.XXXXXX); \
	HEADRACE_TEST_DB=postgresql $(BIN)/pytest -p no:cacheprovider --basetemp="$$tmp/postgresql" $(PYTEST_ARGS) >"$$log" 2>&1 & pg=$$!; \
	trap 'kill $$pg 2>/dev/null; rm -f "$$log"' INT TERM; \
	echo "== pytest on SQLite (PostgreSQL in parallel, shown after)"; \
	HEADRACE_TEST_DB=sqlite $(BIN)/pytest --basetemp="$$tmp/sqlite" $(PYTEST_ARGS); sqlite=$$?; \
	wait $$pg; postgresql=$$?; \
	echo "== pytest on PostgreSQL (SQLite run: exit $$sqlite)"; cat "$$log"; rm -f "$$log"; \
	if [ $$sqlite -eq 0 ] && [ $$postgresql -eq 0 ]; then rm -rf "$$tmp"; else echo "test files kept in $$tmp"; exit 1; fi

test: lint typecheck pytest

# The fast tier: the tests marked `inprocess` (tests/inprocess/ and the modules tests/conftest.py lists: the door
# and frontend through httpx's ASGI transport, pure modules, the SDK), on SQLite, no server, broker or subprocess.
check: lint typecheck
	HEADRACE_TEST_DB=sqlite $(BIN)/pytest -p no:cacheprovider -q -m inprocess

bench: test-deps
	$(BIN)/python bench/storage.py
	$(BIN)/python bench/events.py
	$(BIN)/python bench/kafka_relay.py
	$(BIN)/python bench/functions.py
	$(BIN)/python bench/xfel.py
	$(BIN)/python bench/distributed.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
