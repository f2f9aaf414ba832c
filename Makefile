# radstore: `make demo` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.radstore-installed
DEMO_DIR ?= demo
DEMO_N ?= 400
# Enough patients in val and test for every classification task to have >= 15 test and >= 8
# validation positives (AUROC on fewer is reported as insufficient).
DEMO_SPLIT ?= 0.45,0.2,0.35
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint format bench venv clean constraints

venv: $(STAMP)

# torch/torchvision first, pinned: pip takes both from this machine's disk (torch 2.13's CPU
# wheel cannot be used: PyPI's torchvision fails to import beside it, and open_clip needs it).
# Every other package at the version constraints.txt pins (the environment the tests passed in).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

# The upgrade procedure: resolve pyproject.toml afresh in a throwaway venv and freeze it into
# constraints.txt; then `make test` (a new .venv from it) and commit both if it passes.
constraints:
	rm -rf .venv-upgrade
	$(PYTHON) -m venv .venv-upgrade
	.venv-upgrade/bin/python -m pip install -q --upgrade pip
	.venv-upgrade/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	.venv-upgrade/bin/python -m pip install -q -e '.[test]'
	{ head -2 constraints.txt; .venv-upgrade/bin/python -m pip freeze --exclude-editable; } > constraints.new
	mv constraints.new constraints.txt
	rm -rf .venv-upgrade $(VENV)

demo: $(STAMP)
	$(VENV)/bin/radstore synth --out $(DEMO_DIR)/cohort --n $(DEMO_N) --split $(DEMO_SPLIT) --seed 0 --preview --quiet
	$(VENV)/bin/radstore study --config configs/demo.yaml --store $(DEMO_DIR)/store \
		--manifest $(DEMO_DIR)/cohort/manifest.parquet --report $(DEMO_DIR)/report
	@echo
	@echo "contact sheet of the cohort: $(DEMO_DIR)/cohort/preview.png"
	@echo "next: open $(DEMO_DIR)/report/index.html; query the results:"
	@echo "  .venv/bin/radstore query --store $(DEMO_DIR)/store \"SELECT task, head, encoder, round(value, 3) AS value, round(ci_low, 3) AS low, round(ci_high, 3) AS high FROM latest WHERE \\\"primary\\\" ORDER BY task, head, value DESC\""
	@echo "real weights: put model folders in \$$RADSTORE_WEIGHTS_DIR/{rad-dino,chexagent,biomedclip}; your own images: a manifest.parquet (README)"

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# ruff (configured in pyproject.toml): lint and format check; `make format` rewrites.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: $(STAMP)
	$(PY) -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
