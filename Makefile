# RFUAV Model Service. `make run` and `make test` set everything up themselves (idempotent).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: setup run test demo lint typecheck bench browser clean gpu-check

$(STAMP): setup.cfg setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,ray]'
	touch $(STAMP)

setup: $(STAMP)

## The browser tests drive Debian's Chromium (never a downloaded browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver) >/dev/null 2>&1 \
	  || echo "chromium could not be installed: the browser tests will say so and skip"; }

run: setup
	$(BIN)/rfuavd all

## The suite, then the web layer's tests again against two uvicorn workers (RFUAV_WEB_WORKERS=2).
test: setup browser
	$(BIN)/python -m pytest
	TEST_WEB_WORKERS=2 $(BIN)/python -m pytest tests/web

## The whole service on synthetic data in a few minutes (deploy/demo): data, split, training with
## a progress bar, inference, then a clean stop. DEMO_ARGS: e.g. --keep (serve until Ctrl-C).
demo: setup
	$(BIN)/python -m deploy.demo $(DEMO_ARGS)

## One linter and one formatter (ruff, line length 120: ruff.toml) over the whole tree.
lint: setup
	$(BIN)/ruff check protocol supervisor runner web tests benchmarks deploy
	$(BIN)/ruff format --check protocol supervisor runner web tests benchmarks deploy

typecheck: setup
	$(BIN)/mypy protocol supervisor runner web

## benchmarks.http and benchmarks.serving drive Debian's wrk as their load generator;
## benchmarks.serving also needs the `bench` extra (FastAPI, LitServe: the servers it compares with).
bench: setup
	@command -v wrk >/dev/null 2>&1 || { \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends wrk) >/dev/null 2>&1 \
	  || echo "wrk could not be installed: benchmarks.http and benchmarks.serving will say so"; }
	@$(BIN)/python -c 'import fastapi, litserve' 2>/dev/null || $(BIN)/python -m pip install -q -e '.[test,ray,bench]'
	$(BIN)/python -m benchmarks

## Every GPU path against the whole service (at most 5 minutes); says so and passes without a GPU.
gpu-check: setup
	$(BIN)/python deploy/gpu_check.py

clean:
	rm -rf $(VENV) var .pytest_cache
