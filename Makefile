# Quick start: `make demo` (evaluation on embedded defaults) and `make test` (the test suite).
# Both set up what they need (Debian packages, a venv) and are fast when already set up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch, installed before the project so nothing pulls a CUDA build.
TORCH_SPEC ?= torch==2.13.0
SYSTEM_PACKAGES := coq libcoq-coquelicot libcoq-mathcomp-ssreflect bubblewrap
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: demo test system install lint bench clean

system:
	@if command -v coqtop >/dev/null && command -v bwrap >/dev/null \
	    && dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1; then :; else \
	  echo "installing $(SYSTEM_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	fi

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH_SPEC)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

install: system $(BIN)/.installed

test: install
	@# pytest exits 5 when it collected no test: that must fail, not pass silently.
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "error: no tests were collected"; exit 1; fi; exit $$rc

# The portfolio baseline on miniF2F-rocq test with real Coq (resumable: a re-run is instant).
demo: install
	$(BIN)/prover db upgrade
	$(BIN)/prover data import minif2f --itp coq
	$(BIN)/prover eval minif2f --itp coq --split test --backend portfolio --timeout 60 --report reports/demo
	$(BIN)/prover db stats
	@echo "report: $(CURDIR)/reports/demo/report.md"

bench: install
	$(BIN)/python bench/verify_throughput.py
	$(BIN)/python bench/db_scale.py
	$(BIN)/python bench/pipeline_efficiency.py

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
