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
# The torch-free core under AddressSanitizer + UndefinedBehaviorSanitizer (make sanitize, run
# by make test) and the libFuzzer targets (make fuzz-cpp), each in its own build directory.
ASAN_DIR := build/asan
FUZZ_DIR := build/fuzz
FUZZ_SECONDS ?= 60
FUZZ_CALLS ?= 5000
FUZZ_TARGETS := manifest generation_manifest npy
CCACHE := $(shell command -v ccache 2>/dev/null)
CORE_CMAKE := -G Ninja -DKILN_WITH_TORCH=OFF -DKILN_BUILD_PYTHON=OFF -DKILN_SANITIZE=address,undefined \
	-DKILN_WARNINGS_AS_ERRORS=ON $(if $(CCACHE),-DCMAKE_CXX_COMPILER_LAUNCHER=$(CCACHE))

.PHONY: help setup apt apt-fuzz deps cpp checkpoints typestubs demo test lint sanitize fuzz fuzz-cpp test-gpu bench bench-generation check-tensorrt clean bench-serve serve

help:
	@echo "make demo   build the deployables, semantic search through the C++ runtime, parity table"
	@echo "make test   the whole test suite (lint, pytest, ctest, make sanitize)"
	@echo "make lint   ruff (format and lint) and mypy on the kiln package"
	@echo "make sanitize  the torch-free core's ctest under ASan + UBSan (build/asan)"
	@echo "make fuzz   FUZZ_CALLS=$(FUZZ_CALLS) hostile calls through every entry point of every family (build/fuzz-py), then make fuzz-cpp"
	@echo "make fuzz-cpp  libFuzzer on the manifest, generation manifest and .npy parsers, FUZZ_SECONDS=$(FUZZ_SECONDS) each"
	@echo "make bench  benchmark MiniLM on every backend (writes $(BENCH_DIR)/minilm.json)"
	@echo "make bench-generation  GPT-2 small, BART-base and t5-small generation, transformers vs kiln ($(BENCH_DIR)/generation-*.json)"
	@echo "make test-gpu  on a GPU host with TensorRT: every deployable with TensorRT plans, parity, bench"
	@echo "make serve  MiniLM on the Triton server bundled in nvidia-pytriton (127.0.0.1:8000; Ctrl-C stops it)"
	@echo "make bench-serve  MiniLM on Triton under 1, 8, 32 concurrent clients vs Engine.run ($(BENCH_DIR)/serve-minilm.json)"
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

CHECKPOINT_FILES := $(KILN_CACHE)/checkpoints/all-MiniLM-L6-v2/config.json $(KILN_CACHE)/tokenizers/bart/tokenizer.json \
	$(KILN_CACHE)/tokenizers/t5/tokenizer.json $(KILN_CACHE)/tokenizers/mbart/tokenizer.json
checkpoints: $(CHECKPOINT_FILES)
$(CHECKPOINT_FILES) &: scripts/fetch_checkpoints.py python/kiln/processing/bpe.py python/kiln/processing/sentencepiece.py | $(VENV)/.deps
	$(PY) scripts/fetch_checkpoints.py --pip $(PIP)

demo: setup
	$(KILN) demo

# pytest, with the sanitizer build and its tests beside it (niced: they take the cycles pytest
# leaves idle, about 3 minutes of work), then the C++ tests. Any failure fails the target; the
# sanitizer's output is printed once pytest is done.
test: setup lint
	@mkdir -p build; rm -f build/sanitize.rc; trap 'kill 0' INT TERM; \
	( nice -n 10 $(MAKE) --no-print-directory sanitize > build/sanitize.log 2>&1; echo $$? > build/sanitize.rc ) & \
	$(PY) -m pytest tests; rc=$$?; wait; \
	echo "--- make sanitize (ran beside pytest):"; cat build/sanitize.log; \
	[ "$$(cat build/sanitize.rc 2>/dev/null)" = 0 ] || { echo "make sanitize failed"; rc=1; }; \
	ctest --test-dir $(BUILD_DIR) --output-on-failure || rc=1; exit $$rc

# Configured once, then incremental (ninja, and ccache when installed): the core is small.
sanitize: apt
	@test -f $(ASAN_DIR)/build.ninja || cmake -S . -B $(ASAN_DIR) $(CORE_CMAKE) -DCMAKE_BUILD_TYPE=Debug \
	  "-DCMAKE_CXX_FLAGS_DEBUG=-g -O1" >/dev/null
	cmake --build $(ASAN_DIR)
	ctest --test-dir $(ASAN_DIR) --output-on-failure -j2

# Tiny engines of every deployable (built once into build/fuzz-py/engines), FUZZ_CALLS randomized
# hostile calls in worker processes (a crash is counted with its seed), the report in
# build/fuzz-py/report.json; any crash, hang or unnamed error fails. Then the C++ parsers' fuzzers.
fuzz: setup
	$(PY) -m kiln.fuzz --build --engines build/fuzz-py/engines --calls $(FUZZ_CALLS) --seed 0 \
	  --json build/fuzz-py/report.json
	$(MAKE) --no-print-directory fuzz-cpp

# clang and its runtime libraries (libFuzzer) only for fuzz-cpp; the runtime package matches
# clang's major version.
apt-fuzz:
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	if ! command -v clang++ >/dev/null; then echo "installing clang"; $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq clang >/dev/null; fi; \
	rt=libclang-rt-$$(clang++ -dumpversion | cut -d. -f1)-dev; \
	if ! dpkg -s $$rt >/dev/null 2>&1; then echo "installing $$rt"; \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$rt >/dev/null; fi

# Each target runs FUZZ_SECONDS from the seed corpus (scripts/fuzz_seeds.py); a crash, a
# sanitizer finding or an exception other than kiln::Error fails the target (the input that
# did it lands in build/fuzz/artifacts/<target>/).
fuzz-cpp: apt apt-fuzz
	@test -f $(FUZZ_DIR)/build.ninja || CXX=clang++ cmake -S . -B $(FUZZ_DIR) $(CORE_CMAKE) -DKILN_BUILD_FUZZERS=ON \
	  -DKILN_BUILD_TOOLS=OFF -DKILN_BUILD_EXAMPLES=OFF -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(FUZZ_DIR)
	$(PYTHON) scripts/fuzz_seeds.py $(FUZZ_DIR)/seeds
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_DIR)/corpus/$$t $(FUZZ_DIR)/artifacts/$$t; \
	  dict=tests/fuzz/$$( [ $$t = npy ] && echo npy || echo manifest ).dict; \
	  echo "fuzz_$$t: $(FUZZ_SECONDS) s"; \
	  ASAN_OPTIONS=allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(FUZZ_DIR)/tests/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -max_len=65536 \
	    -timeout=10 -print_final_stats=1 -dict=$$dict -artifact_prefix=$(FUZZ_DIR)/artifacts/$$t/ \
	    $(FUZZ_DIR)/corpus/$$t $(FUZZ_DIR)/seeds/$$t 2>&1 | grep -E "^(stat::number_of_executed_units|stat::peak_rss|==[0-9]+==|SUMMARY|Done|.*ERROR)" ; \
	  status=$${PIPESTATUS[0]}; \
	  if [ $$status -ne 0 ]; then echo "fuzz_$$t FAILED (exit $$status); inputs in $(FUZZ_DIR)/artifacts/$$t/"; exit 1; fi; \
	done

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
# source, 4 beams, 64 new tokens, and greedy on an engine built for one row per step.
# transformers generate vs kiln::Generator on each backend.
bench-generation: setup
	mkdir -p $(BENCH_DIR)
	$(KILN) build export/gpt2-text-generation.toml
	$(KILN) bench engines/gpt2-text-generation --batch 1,8 --seq 32 --new-tokens 64 --json $(BENCH_DIR)/generation-gpt2.json --markdown
	$(KILN) build export/bart-summarization.toml
	$(KILN) bench engines/bart-summarization --batch 1 --seq 512 --new-tokens 64 --beams 4 --json $(BENCH_DIR)/generation-bart.json --markdown
	$(KILN) build export/bart-summarization.toml --dims batch=1:1:16 --output engines/bart-summarization-greedy
	$(KILN) bench engines/bart-summarization-greedy --batch 1 --seq 512 --new-tokens 64 --beams 1 --json $(BENCH_DIR)/generation-bart-greedy.json --markdown
	$(KILN) build export/t5-summarization.toml
	$(KILN) bench engines/t5-summarization --batch 1 --seq 512 --new-tokens 64 --beams 4 --json $(BENCH_DIR)/generation-t5.json --markdown

# Serving: the real MiniLM engine (built once) on the Triton server bundled in nvidia-pytriton.
MINILM_ENGINE := engines/minilm-feature-extraction
$(MINILM_ENGINE)/manifest.json: | $(VENV)/.kiln-built
	$(KILN) build export/minilm-feature-extraction.toml

serve: setup $(MINILM_ENGINE)/manifest.json
	$(KILN) serve $(MINILM_ENGINE)

bench-serve: setup $(MINILM_ENGINE)/manifest.json
	mkdir -p $(BENCH_DIR)
	$(KILN) bench-serve $(MINILM_ENGINE) --clients 1,8,32 --seconds 20 --json $(BENCH_DIR)/serve-minilm.json --markdown

# The TensorRT backend built against the lean runtime (no GPU needed): compiles, links and
# refuses with a Device error. TENSORRT_INCLUDE_DIR: the NvInfer*.h directory (never committed).
check-tensorrt: apt | $(VENV)/bin/python
	@test -n "$(TENSORRT_INCLUDE_DIR)" || { echo "usage: make check-tensorrt TENSORRT_INCLUDE_DIR=/path/to/TensorRT/include"; exit 2; }
	VENV=$(VENV) scripts/check-tensorrt-build.sh "$(TENSORRT_INCLUDE_DIR)"

clean:
	rm -rf build engines/*/ $(VENV)/.kiln-built
