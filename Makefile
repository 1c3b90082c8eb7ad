# Two entry points on a fresh clone with only python3 and make:
#   make run    set up .venv, push the demo tasks, run the daemon on config.example.toml
#   make test   set up .venv, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config.example.toml
# `make test PYTEST_PARALLEL="-n 3 --dist loadfile"` runs the suite in three pytest-xdist workers
# (each test file whole in one). Not the default yet: a few tests bound to seconds of wall time
# still fail in it when the machine is loaded.
PYTEST_PARALLEL ?=

.PHONY: run test lint venv clean

venv: $(VENV)/.installed

# Re-installed when pyproject.toml changes; `pip install -e` keeps the checkout live.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $@

run: venv
	$(BIN)/apalis push --config $(CONFIG) --file examples/demo.jsonl > /dev/null
	$(BIN)/apalis run --config $(CONFIG)

test: venv
	$(BIN)/pytest $(PYTEST_PARALLEL)

lint: venv
	$(BIN)/ruff check apalis_cli backends tests bench
	$(BIN)/ruff format --check apalis_cli backends tests bench
	$(BIN)/mypy --strict apalis_cli backends tests bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache apalis.db apalis.db-wal apalis.db-shm
