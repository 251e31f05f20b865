# gputel — one target per chore; CI (.ci/run) calls these same targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
PYTEST_ARGS ?=

.PHONY: install proto proto-check lint fmt test cover cover-html cover-pkg bench clean

install: ## create .venv and install the project (editable) with test extras
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'

proto: ## regenerate proto/gen from proto/*.proto
	PYTHON=$(PY) scripts/gen_proto.sh

lint: ## ruff (lint + format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy walbroker streamer collector gateway store proto

fmt:
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: ## the whole suite (unit + integration against real processes)
	$(BIN)/pytest -q $(PYTEST_ARGS)

cover: ## the suite with coverage (also of subprocesses), summary; fails under 85 %
	rm -f .coverage .coverage.*
	COVERAGE_PROCESS_START=$(CURDIR)/pyproject.toml $(BIN)/pytest -q --cov --cov-report= $(PYTEST_ARGS)
	$(BIN)/coverage combine -q || true
	$(BIN)/coverage report --fail-under=85

cover-html: cover ## HTML coverage report in htmlcov/ (and coverage.html)
	$(BIN)/coverage html -q -d htmlcov
	ln -sf htmlcov/index.html coverage.html

cover-pkg: ## per-package coverage summary (run make cover first)
	@for p in walbroker streamer collector gateway store proto; do \
	  printf '%-10s ' $$p; $(BIN)/coverage report --include="$$p/*" 2>/dev/null | tail -1 | awk '{print $$NF}'; done

bench: ## benchmarks (not tests): writes bench/results/latest.json
	$(PY) -m bench.run --out bench/results/latest.json

clean:
	rm -rf build *.egg-info .coverage .coverage.* htmlcov coverage.html .pytest_cache .mypy_cache .ruff_cache
