# Self-documenting Makefile: `make help` lists the targets (lines with a `## ` comment).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
BENCH_ARGS ?= plain_p4cnn p4cnn fa_p4cnn fa_p4cnn@attention_impl=reference a_p4cnn a_p4cnn@attention_impl=reference \
	a_p4_allcnnc --batch-size-for a_p4_allcnnc=16 --baseline p4cnn --rounds 7
SEEDS ?= 3
# reproduce-mini's seeds unless SEEDS is given: 5 under protocol clean, 3 under original
MINI_SEEDS = $(if $(filter command line environment,$(origin SEEDS)),$(SEEDS),clean=5 original=3)
TABLE ?= all
EPOCHS ?=
PROTOCOLS ?= clean original
JOBS ?= 1
GPUS ?=
LAUNCHER ?=
REPRODUCE = $(BIN)/python scripts/reproduce.py --protocols $(PROTOCOLS) --jobs $(JOBS) $(if $(EPOCHS),--epochs $(EPOCHS)) \
	$(if $(GPUS),--gpus $(GPUS)) $(if $(LAUNCHER),--launcher $(LAUNCHER))
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install train reproduce reproduce-mini tables bench gpu-check lint format test test-full clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python ## Create .venv, install the pinned requirements and the package (editable), build the CPU kernels
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m attentive_gcnn.accel

train: ## Train the default job (P4CNN on the embedded rotmnist_mini, CPU); ARGS="key=value ..." overrides
	$(BIN)/python -m attentive_gcnn.train $(ARGS)

reproduce: ## The paper's tables: TABLE=all|rotmnist|cifar10|pcam, SEEDS=3, PROTOCOLS="clean original", EPOCHS=, JOBS=1, GPUS=0,1,.., LAUNCHER=slurm|local
	$(REPRODUCE) --seeds $(SEEDS) --table $(TABLE) $(ARGS)

reproduce-mini: ## The Table 1 analogue on rotmnist_mini: 5 seeds clean, 3 original (SEEDS=, PROTOCOLS=, EPOCHS=, JOBS=)
	$(REPRODUCE) --seeds $(MINI_SEEDS) --table mini $(ARGS)

tables: ## Rebuild results/tables (tables, comparisons) and the README's copies from the published runs in results/runs
	$(BIN)/python scripts/make_tables.py --runs results/runs --out results/tables --readme README.md

bench: ## Time a training step, an eval forward and peak memory per model; BENCH_ARGS= models and options
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

gpu-check: ## The prepared GPU check (docs/gpu.md): DEVICE=cuda (default) or cpu (a dry run); ARGS= its options
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) scripts/gpu_check.py --device $(or $(DEVICE),cuda) $(ARGS)

lint: ## ruff check and format check
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

format: ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix src tests scripts
	$(BIN)/ruff format src tests scripts

test: ## Run the test suite (fast: excludes tests marked slow)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-full: ## Run every test, the slow ones too
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean: ## Remove caches (keeps .venv and outputs/)
	rm -rf .pytest_cache .ruff_cache build src/*.egg-info
	find . -name __pycache__ -type d -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
