# plmkit developer entry points. Each target works on a fresh checkout by itself: it creates .venv
# (with $(PYTHON)) when absent and installs the package once; a stamp file keeps later runs fast.
#
#   make test       lint + the whole test suite (slow and multi-process tests included; what CI runs)
#   make test-fast  the suite without the slow and multi-process tests (the inner loop)
#   make test-dist-stress  the multi-process tests 5 times beside a CPU-bound process
#   make demo       train a tiny model on CPU and generate from it
#                   (again: refused while runs/demo holds a run; make demo ARGS="name=demo2" trains beside it,
#                   ARGS="--overwrite" moves runs/demo aside, ARGS="data=FILE" trains in runs/demo-<FILE name>)
#   make rlhf       pretrain -> SFT -> reward model -> PPO with PTX on additions, on CPU (recipes/rlhf/demo.yaml;
#                   ARGS="--overwrite" moves runs/rlhf aside, ARGS="compare_ptx=true" adds a ptx.coef=0 run)
#   make lint       ruff check, ruff format --check, and the import layers (lint-imports)
#   make bench      plmkit vs transformers / peft with the machine's limits, ~12 minutes on 2 cores
#                   (ARGS=--quick: ~2 minutes; ARGS="--only decode-gpt2 train-gpt2"; see benchmarks/run.py);
#                   writes benchmarks/results/<cpu>-<date>.json, .md and .png
#   make clean   caches and build outputs (keeps .venv); `make distclean` also removes .venv
#
# torch: without a CUDA GPU (no `nvidia-smi`) the CPU build torch==2.13.0 is installed first, because
# other torch specs may pull a multi-GB CUDA build. GPU users choose their own build, e.g.
#   make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
# or install torch into .venv themselves before the first `make`.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip
# pip -q still warns "Location '...' is ignored" once per package on machines whose pip config names
# an extra index folder that doesn't exist; drop that noise (pipefail keeps pip's exit status).
QUIET := 2>&1 | { grep -v "^WARNING: Location '.*' is ignored" || true; }

ifeq ($(shell command -v nvidia-smi 2>/dev/null),)
TORCH_SPEC ?= torch==2.13.0
else
TORCH_SPEC ?=
endif

# Lint only the folders that exist: git keeps no empty folders, so a fresh clone may lack one.
LINT_PATHS := $(wildcard src tests benchmarks)

.PHONY: test test-fast test-dist-stress demo rlhf bench lint install clean distclean

test: lint
	$(BIN)/python -m pytest

test-fast: lint
	$(BIN)/python -m pytest -m "not slow and not dist"

# The distributed tests 5 times in a row beside a CPU-bound background process (their stability check).
test-dist-stress: $(STAMP)
	@$(BIN)/python -c "while True: pass" & burner=$$!; trap "kill $$burner" EXIT; \
	for i in 1 2 3 4 5; do echo "round $$i"; $(BIN)/python -m pytest -m dist -q || exit 1; done

demo: $(STAMP)
	$(BIN)/plm demo $(ARGS)

rlhf: $(STAMP)
	$(BIN)/plm rlhf-demo recipes/rlhf/demo.yaml $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/lint-imports --no-cache

install: $(STAMP)

# A new venv gets a current pip: editable installs from pyproject.toml need pip >= 21.3.
$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
		|| { echo "plmkit needs Python >= 3.10; run e.g. make PYTHON=python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip $(QUIET) || echo "warning: could not upgrade pip; continuing" >&2

# Re-installs when pyproject.toml changes (new dependencies); the source is installed editable,
# so code changes need no re-install.
$(STAMP): pyproject.toml | $(BIN)/python
	$(if $(strip $(TORCH_SPEC)),$(PIP) install -q $(TORCH_SPEC) $(QUIET))
	$(PIP) install -q -e '.[dev]' $(QUIET)
	@touch $@

clean:
	rm -rf build dist .pytest_cache .ruff_cache src/*.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
