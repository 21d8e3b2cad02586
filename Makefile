# grpo-cli developer entry points. `make demo` on a fresh machine sets up and runs the default.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean check-vllm-extra

$(BIN)/grpo: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch is pinned: an unpinned torch pulls other multi-GB builds.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/grpo

setup: $(BIN)/grpo

demo: setup
	$(BIN)/grpo run

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check grpo_cli tests

# The [vllm] extra must resolve together with this project's own requirements (GPU machines
# install it; a resolver dry run checks it anywhere, downloading only metadata).
check-vllm-extra: setup
	$(BIN)/pip install --dry-run --ignore-installed --quiet '.[vllm]'

clean:
	rm -rf runs outputs multirun .pytest_cache

bench: setup
	$(BIN)/python benchmarks/report_scaling.py
