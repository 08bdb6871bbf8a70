# Two commands do all set-up on a fresh machine:
#   make run   - create .venv, install everything, serve the bundled default model
#   make test  - create .venv, install everything, run the whole suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch lies on local disk here; install it first so that no
# dependency can pull a multi-GB CUDA build. On a GPU machine: make TORCH_SPEC="torch==2.13.0" ...
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.poolkit-installed
INTEGRATIONS := $(wildcard integrations/*/pyproject.toml)

.PHONY: run test lint unit install bench clean

$(STAMP): pyproject.toml $(INTEGRATIONS) Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[server,corpus,default-model,bench,test]" $(foreach p,$(INTEGRATIONS),-e "$(dir $(p))[test]")
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/poolkit serve default

# House rules first (seconds), then the whole suite.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest

# The fast in-process tests only (under a minute).
unit: $(STAMP)
	$(PY) -m pytest -m unit

bench: $(STAMP)
	$(PY) benchmarks/bench_throughput.py

clean:
	rm -rf $(VENV)
