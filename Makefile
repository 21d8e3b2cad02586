# grpo-cli developer entry points. `make demo` on a fresh machine sets up and runs the default.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean check-vllm-extra

$(BIN)/grpo: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch is pinned: an unpinned torch pulls other multi-GB builds.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(BIN)/grpo

setup: $(BIN)/grpo

demo: setup
	$(BIN)/grpo run

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check grpo_cli tests benchmarks

# The [vllm] extra must resolve together with this project's own requirements (GPU machines
# install it; a resolver dry run checks it anywhere, downloading only metadata).
check-vllm-extra: setup
	$(BIN)/pip install --dry-run --ignore-installed --quiet '.[vllm]'

clean:
	rm -rf runs outputs multirun .pytest_cache

# Timings on this machine, written to benchmarks/results.md (see benchmarks/README.md).
bench: setup
	$(BIN)/pip install -q -c constraints.txt -e '.[bench]'
	echo "# Benchmark results ($$(date -u +%F), $$(nproc) CPU cores, make bench)" > benchmarks/results.md.tmp
	$(BIN)/python benchmarks/trl_compare.py --steps 8 --repeats 3 >> benchmarks/results.md.tmp
	$(BIN)/python benchmarks/step_profile.py --steps 10 >> benchmarks/results.md.tmp
	$(BIN)/python benchmarks/telemetry_overhead.py --steps 12 --repeats 5 >> benchmarks/results.md.tmp
	$(BIN)/python benchmarks/padding_waste.py --steps 6 >> benchmarks/results.md.tmp
	printf '\n### grpo report scaling\n\n' >> benchmarks/results.md.tmp
	$(BIN)/python benchmarks/report_scaling.py --steps 200 2000 10000 >> benchmarks/results.md.tmp
	mv benchmarks/results.md.tmp benchmarks/results.md
	cat benchmarks/results.md
