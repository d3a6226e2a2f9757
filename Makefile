# Two commands for a fresh machine: `make demo` and `make test`. Both build the
# virtualenv from the lock file first (requirements-dev.lock: every package pinned,
# with hashes), so it holds exactly what the Dataflow image holds, plus the test tools.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The demo runs offline, so it uses seeded random weights; with internet access,
# `make demo WEIGHTS=imagenet` gives real ResNet50 embeddings.
WEIGHTS ?= random
DEMO_OUTPUT ?= out/demo

.DEFAULT_GOAL := help
.PHONY: help demo test test-fast benchmark benchmark-models benchmark-layout benchmark-map benchmark-launcher benchmark-similarity benchmark-startup benchmark-fetch lint format metadata lock clean dry-run

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-20s %s\n", $$1, $$2}'

demo: $(VENV)/.installed ## Embed the sample photographs locally; open out/demo/report.html
	$(BIN)/python -m pipeline --input tests/data/photos.csv --output $(DEMO_OUTPUT) --weights $(WEIGHTS) --map --neighbors 5

# Two test processes (pytest-xdist). The whole suite keeps each file's tests in one
# process (--dist loadfile), so that the pipeline runs a file's fixtures share happen
# once; the fast tier has no such fixtures and spreads its tests one by one, an idle
# process taking queued tests from the busy one (--dist worksteal: its tests' times are
# uneven, from milliseconds to 8 s).
PYTEST := $(BIN)/python -m pytest -n 2

test: $(VENV)/.installed lint ## Lint, then run the whole test suite (installs Chromium if it can)
	tests/install_browser.sh
	$(PYTEST) --dist loadfile

# What earns a test its place in the fast tier: pyproject.toml, next to the markers.
test-fast: $(VENV)/.installed ## Every test that runs no whole pipeline, in about a minute
	$(PYTEST) --dist worksteal -m "not pipeline_run and not slow"

benchmark: $(VENV)/.installed ## Images/s of the pipeline vs the raw model and the original approach
	$(BIN)/python benchmarks/throughput.py $(BENCHMARK_ARGS)

benchmark-models: $(VENV)/.installed ## Images/s per model and engine: raw, and end to end on 100 and 2,000 JPEGs, 3 pairs of runs (marginal rate, median and spread)
	$(BIN)/python benchmarks/models.py $(BENCHMARK_ARGS)

benchmark-layout: $(VENV)/.installed ## Images/s per process and thread layout of the local runner, 60 and 600 JPEGs
	$(BIN)/python benchmarks/layout.py $(BENCHMARK_ARGS)

benchmark-map: $(VENV)/.installed ## Peak memory of the --map branch, 10,000 to 80,000 embeddings
	$(BIN)/python benchmarks/map_memory.py

benchmark-similarity: $(VENV)/.installed ## Time, memory and recall@10 of --neighbors, 50,000 to 200,000 embeddings (BENCHMARK_ARGS=--grouping: the grouping)
	$(BIN)/python benchmarks/similarity.py $(BENCHMARK_ARGS)

benchmark-startup: $(VENV)/.installed ## A 13-photo local run against a plain Keras script
	$(BIN)/python benchmarks/startup.py

benchmark-launcher: $(VENV)/.installed ## Wall time and peak RSS of a Flex Template launch
	$(BIN)/python benchmarks/launcher.py

benchmark-fetch: $(VENV)/.installed ## Images/s fetching 2,000 URLs from 4 loopback hosts (50 ms each) vs img2dataset and local files
	$(BIN)/python benchmarks/fetch.py $(BENCHMARK_ARGS)

lint: $(VENV)/.installed ## ruff lint and format check
	$(BIN)/ruff check pipeline tests benchmarks templates
	$(BIN)/ruff format --check pipeline tests benchmarks templates

format: $(VENV)/.installed ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix pipeline tests benchmarks templates
	$(BIN)/ruff format pipeline tests benchmarks templates

# Each variable reaches the module through the recipe's environment (make exports the
# command line's), so a value needs no quoting here. docs/dataflow.md, "Dry run".
dry-run: $(VENV)/.installed ## Check a Dataflow launch offline: PROJECT= REGION= BUCKET= INPUT= OUTPUT= [PARAMETERS=]
	@$(BIN)/python -m pipeline.dry_run --project "$$PROJECT" --region "$$REGION" \
		--bucket "$$BUCKET" --input "$$INPUT" --output "$$OUTPUT" --parameters "$$PARAMETERS" \
		--job_name "$$JOB_NAME" --machine_type "$$MACHINE_TYPE" --template "$$TEMPLATE" \
		--image "$$IMAGE"

metadata: $(VENV)/.installed ## Write metadata.json and docs/options.md from the flags (pipeline/options/flags.py)
	$(BIN)/python -m pipeline.options.describe

# The same resolution for every lock: the Linux x86-64 wheels that the Dataflow image
# (python:3.11-slim) and these machines install.
LOCK_FLAGS := --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	--custom-compile-command "make lock" --quiet

lock: $(VENV)/.installed ## Re-resolve requirements*.txt into requirements.lock, requirements-dev.lock and requirements-gpu.lock
	$(BIN)/uv pip compile requirements.txt $(LOCK_FLAGS) -o requirements.lock
	$(BIN)/uv pip compile requirements-dev.txt -c requirements.lock $(LOCK_FLAGS) -o requirements-dev.lock
	$(BIN)/uv pip compile requirements-gpu.txt -c requirements.lock $(LOCK_FLAGS) -o requirements-gpu.lock

# A new venv whenever the lock changes, so that it never keeps a package the lock dropped.
# --no-deps: the lock already names every package; pip check proves they fit together.
# pip installs the lock's uv (its lines, hashes included), and uv the whole lock: the
# same pinned, hash-checked files in about a third of pip's time (downloads in parallel,
# bytecode compiled as pip does). Where uv cannot reach PyPI (pip may be configured for
# a mirror that uv does not read), pip installs the lock itself.
UV_PIN := $(VENV)/uv-requirement.txt
$(VENV)/.installed: requirements-dev.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (set PYTHON=python3.11)")'
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	awk '/^uv==/ {keep = 1} keep {print} keep && !/\\$$/ {keep = 0}' requirements-dev.lock > $(UV_PIN)
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r $(UV_PIN)
	$(BIN)/uv pip install --python $(BIN)/python --quiet --no-deps --require-hashes --compile-bytecode -r requirements-dev.lock \
		|| $(BIN)/python -m pip install --quiet --no-deps --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation --editable .
	$(BIN)/python -m pip check
	touch $@

clean: ## Remove the virtualenv and demo output
	rm -rf $(VENV) out
