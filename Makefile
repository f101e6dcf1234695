# oi: the commands a newcomer needs. `make setup` is idempotent and quick when all is in place.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.oi-installed
COMPOSE := $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo "docker-compose")
# Project "oi", compose/.env when there is one (copy compose/env/12gb.env or 2gpu.env there).
COMPOSE_ARGS := -p oi -f compose/docker-compose.yml $(if $(wildcard compose/.env),--env-file compose/.env)
PYTEST_ARGS ?=

.PHONY: setup venv engine compose-tools images browser test lint typecheck unit integration security bench up down demo clean help

help:
	@echo "make demo    - replay a scripted CSV session in the sandbox into ./demo-out (no GPU)"
	@echo "make setup   - venv with oi installed, a running Docker engine, the sandbox images"
	@echo "make test    - lint, type check and the whole test suite (runs setup first)"
	@echo "make bench   - per-block latency: bare subprocess vs docker run vs oi"
	@echo "make up/down - start/stop vLLM with Qwen3-4B-Instruct-2507 on a GPU (compose/, compose/.env)"

setup: venv engine compose-tools images browser

compose-tools:
	@bash scripts/ensure-compose.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	  || { echo "oi needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

engine:
	@bash scripts/ensure-docker.sh

images: venv engine
	@$(BIN)/oi images build

# The web UI's tests drive Debian's chromium headless through chromium-driver (never a browser
# download). Installed when missing, as root on Debian; otherwise say how.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium and chromium-driver (for the web UI tests)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "the web UI tests need chromium and chromium-driver: sudo apt-get install chromium chromium-driver"; fi

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

test: setup lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

demo: setup
	@rm -rf demo-out
	$(BIN)/oi replay examples/csv-demo/session.jsonl --yes --out demo-out
	@echo "demo-out/ holds what the sandboxes made: sales.csv, sales_clean.csv, monthly_revenue.csv, monthly_revenue.png"
	@echo "(a scripted session, not a model's: see examples/csv-demo/README.md)"

bench: setup
	$(BIN)/python bench/latency.py

up:
	$(COMPOSE) $(COMPOSE_ARGS) up -d
	@port=$${VLLM_PORT:-$$(sed -n 's/^VLLM_PORT=//p' compose/.env 2>/dev/null)}; port=$${port:-8000}; \
	  echo "waiting for vLLM at http://localhost:$$port/health (model download and load take minutes)..."; \
	  for i in $$(seq 1 120); do curl -fsS http://localhost:$$port/health >/dev/null 2>&1 && { echo "vLLM is up"; exit 0; }; sleep 5; done; \
	  echo "vLLM did not become healthy; see: $(COMPOSE) $(COMPOSE_ARGS) logs vllm"; exit 1

down:
	$(COMPOSE) $(COMPOSE_ARGS) down

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
