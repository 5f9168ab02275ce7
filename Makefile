# cass-lightning: the two commands are `make train` and `make test`; both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Extra arguments for cass-pretrain, e.g. make train ARGS="trainer.max_epochs=2"
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup train test test-fast lint format bench clean-venv

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP) ## create .venv with the tested versions (constraints.txt), package in editable mode

train: $(STAMP) ## quickstart: pretrain CASS on the synthetic data on CPU, export both arms
	WANDB_MODE=$${WANDB_MODE:-offline} $(BIN)/cass-pretrain experiment=quickstart $(ARGS)

test: $(STAMP) ## the whole test suite (CPU; what CI runs)
	WANDB_MODE=disabled $(BIN)/python -m pytest -q --timeout=900

test-fast: $(STAMP) ## the tests without the slow (subprocess) ones
	WANDB_MODE=disabled $(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: $(STAMP) ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

bench: $(STAMP) ## print throughput, data-loading and CASS-vs-DINO figures (representation.py: separately, ~6 min)
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/dataloading.py
	$(BIN)/python bench/cass_vs_dino.py

clean-venv: ## remove .venv (never touches data/ or runs/)
	rm -rf $(VENV)
