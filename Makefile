# Two commands for a fresh machine: `make demo` and `make test`. Both build the
# virtualenv from the pinned requirements first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The demo runs offline, so it uses seeded random weights; with internet access,
# `make demo WEIGHTS=imagenet` gives real ResNet50 embeddings.
WEIGHTS ?= random
DEMO_OUTPUT ?= out/demo

.DEFAULT_GOAL := help
.PHONY: help demo test benchmark benchmark-map lint format clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

demo: $(VENV)/.installed ## Embed the sample photographs locally; open out/demo/report.html
	$(BIN)/python -m pipeline --input tests/data/photos.csv --output $(DEMO_OUTPUT) --weights $(WEIGHTS) --map

test: $(VENV)/.installed lint ## Lint, then run the whole test suite (installs Chromium if it can)
	tests/install_browser.sh
	$(BIN)/python -m pytest

benchmark: $(VENV)/.installed ## Images/s of the pipeline vs the raw model and the original approach
	$(BIN)/python benchmarks/throughput.py $(BENCHMARK_ARGS)

benchmark-map: $(VENV)/.installed ## Peak memory of the --map branch, 10,000 to 80,000 embeddings
	$(BIN)/python benchmarks/map_memory.py

lint: $(VENV)/.installed ## ruff lint and format check
	$(BIN)/ruff check pipeline tests benchmarks
	$(BIN)/ruff format --check pipeline tests benchmarks

format: $(VENV)/.installed ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix pipeline tests benchmarks
	$(BIN)/ruff format pipeline tests benchmarks

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --editable .
	touch $@

clean: ## Remove the virtualenv and demo output
	rm -rf $(VENV) out
