# Two commands on a fresh machine: `make run` and `make test`. Both are idempotent.
PYTHON ?= python3
VENV   ?= .venv
# A bare `torch` requirement pulls a multi-GB CUDA build; pin the CPU wheel first.
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tsconv-installed
CONFIG ?= configs/quick.yaml

.PHONY: setup run test lint format bench known-answers screenshot clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# --overwrite: a second `make run` replaces the first one's runs (tsconv refuses that otherwise)
run: setup
	$(BIN)/tsconv fetch --sample --data-dir data
	$(BIN)/tsconv train --config $(CONFIG) --out runs/quick --overwrite
	$(BIN)/tsconv predict --run runs/quick
	$(BIN)/tsconv backtest --config $(CONFIG) --out runs/quick-bt --overwrite

# The suite covers the optional Ray executor, so `make test` installs the `ray` extra once.
TESTSTAMP := $(VENV)/.tsconv-test-extras
$(TESTSTAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,ray]"
	touch $(TESTSTAMP)

# Two test processes (pytest-xdist), a module's tests in one of them (its fixtures are built
# once): the suite is mostly single-threaded waits on small fits, and CI has two cores.
TEST_JOBS ?= 2
test: $(TESTSTAMP)
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadscope

# ruff, and the layering contract of pyproject.toml ([tool.importlinter]): data flows one way.
lint: setup
	$(BIN)/ruff check tsconv tests scripts
	$(BIN)/ruff format --check tsconv tests scripts
	$(BIN)/lint-imports

format: setup
	$(BIN)/ruff format tsconv tests scripts
	$(BIN)/ruff check --fix tsconv tests scripts

bench: setup
	$(BIN)/python scripts/run_benchmarks.py --out docs/benchmarks.md

# What each shipped config learns on series with known answers (README, docs/known_answers.md):
# the fixed cases, then the randomized battery (24 draws of seed 0) for three configs.
known-answers: setup
	$(BIN)/python scripts/known_answers.py --out docs/known_answers.md
	$(BIN)/python scripts/known_answers.py --battery --seed 0 --draws 24 --workers 2 \
		--configs quick tcn multiscale --out docs/known_answers.md

# The README's image of a report (needs Chromium): the top of runs/quick-bt/report.html, the
# backtest run again first when that report is missing or older than the code or the config.
REPORT := runs/quick-bt/report.html
$(REPORT): $(STAMP) $(CONFIG) $(shell find tsconv -name "*.py")
	$(BIN)/tsconv fetch --sample --data-dir data
	$(BIN)/tsconv backtest --config $(CONFIG) --out runs/quick-bt --overwrite

screenshot: $(REPORT)
	$(BIN)/python scripts/screenshot_report.py $(REPORT) --out docs/report.png --first-screen

clean:
	rm -rf runs .pytest_cache .hypothesis
