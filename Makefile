# spinenet: `make demo` and `make test` install what they need into .venv on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# CPU runs: keep torch to the machine's cores and W&B offline unless the user says otherwise
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
# extra pytest arguments, e.g. make test PYTEST_ARGS="--junitxml=reports/junit.xml" (CI's test report)
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast lint bench gpu-check clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-10s %s\n", $$1, $$2}'

# An existing .venv is used as it is: packages already there that satisfy pyproject's pins stay (CI puts the
# CPU build of torch there first; here the first install brings PyPI's CUDA build).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,onnx,dicom]'
	touch $(STAMP)

install: $(STAMP) ## create .venv with the package and the dev tools

demo: install ## generate a small phantom, train the U-Net a few minutes on CPU, test it, print where things are
	$(BIN)/spinenet train experiment=demo

test: install ## the test suite (what CI runs)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install ## the tests without the slow training runs
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: install ## ruff
	$(BIN)/ruff check spinenet tests

bench: install ## the benchmarks (print their figures)
	$(BIN)/spinenet bench data
	$(BIN)/spinenet bench train
	$(BIN)/spinenet bench ensemble

# On a machine with a CUDA GPU (never run by CI). The seg/spider epochs need the real data: SPIDER_DIR=<folder>.
gpu-check: install ## CUDA: the gpu tests, bench train and diagnose, one seg/spider epoch in 16-mixed and bf16-mixed
	@$(BIN)/python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'make gpu-check: no CUDA device here')"
	$(BIN)/python -m pytest -q -m gpu $(PYTEST_ARGS)
	$(BIN)/spinenet bench train
	$(BIN)/spinenet bench diagnose --device cuda
	$(BIN)/spinenet bench train --experiment seg/spider --epoch-time --override trainer=gpu --override trainer.precision=16-mixed
	$(BIN)/spinenet bench train --experiment seg/spider --epoch-time --override trainer=gpu --override trainer.precision=bf16-mixed

clean: ## remove generated data, outputs and caches (not .venv)
	rm -rf outputs data .pytest_cache .ruff_cache
