# Two commands do all the set-up on a fresh machine:
#   make simulate   the main job: a simulated 4-site federation on the embedded tiny VLM
#   make test       lint and the test suite
# Both create .venv on first use. torch is installed first and pinned to the CPU wheel
# (a bare `torch` requirement pulls a multi-GB CUDA build); a torch already importable in
# .venv (e.g. a CUDA build on a GPU node) is kept. Override with `make setup TORCH=...`.

PYTHON ?= python3.11
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup browser simulate test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# The HTML run report is tested in a real headless browser (Debian's chromium).
browser:
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium; } \
		|| { sudo apt-get update -qq && sudo apt-get install -y -qq chromium; }

simulate: setup
	$(BIN)/fedvlm simulate --scenario default

# ruff, then the layering contract of pyproject's [tool.importlinter] (a back-arrow fails).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: setup browser lint
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf runs .pytest_cache .import_linter_cache .grimp_cache
