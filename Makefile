# Two entry points: `make quickstart` (the main job on embedded defaults) and `make test`.
# Both create .venv on first use and install the pinned stack (constraints.txt).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The public data sets: NBA_DATA_DIR if set, else ../shared/data when it exists (CI layout).
NBA_DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
export NBA_DATA_DIR

.PHONY: quickstart test install lint bench bench-serving clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall only when the dependency files change.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,spark]"
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(BIN)/nba quickstart

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check nba tests benchmarks
	$(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/bench_simulator.py
	$(BIN)/python benchmarks/bench_online_read.py
	$(BIN)/python benchmarks/bench_incrementality.py
	$(BIN)/python benchmarks/bench_drift.py

# The decision service and batch: after `make quickstart` (they serve its models and features).
bench-serving: install
	$(BIN)/python benchmarks/bench_decide.py
	$(BIN)/python benchmarks/bench_decide_batch.py

clean:
	rm -rf var .pytest_cache
