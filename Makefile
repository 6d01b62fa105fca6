# The README's two commands: `make demo` and `make test`. Both set up .venv first.
# TORCH_SPEC is installed only when the venv has no torch yet: here it resolves to the local CPU
# build; on a machine with a CUDA torch, make the venv with --system-site-packages or set
# TORCH_SPEC to the build you want.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
VENV_FLAGS ?=
BIN := $(VENV)/bin
RUNS ?= runs

.PHONY: setup demo test test-fast lint format clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "$(TORCH_SPEC)"
	$(BIN)/pip install -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/rise demo --out $(RUNS)/demo

test: setup
	$(BIN)/ruff check src tests benchmarks experiments
	$(BIN)/ruff format --check src tests benchmarks experiments
	$(BIN)/pytest

test-fast: setup
	$(BIN)/pytest -m "not slow"

lint: setup
	$(BIN)/ruff check src tests benchmarks experiments

format: setup
	$(BIN)/ruff format src tests benchmarks experiments
	$(BIN)/ruff check --fix src tests benchmarks experiments

clean:
	rm -rf $(VENV) $(RUNS) .pytest_cache .ruff_cache
