# radstore: `make demo` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.radstore-installed
DEMO_DIR ?= demo
DEMO_N ?= 48
PYTEST_ARGS ?=

.PHONY: demo test test-fast bench venv clean

venv: $(STAMP)

# torch/torchvision first, pinned: pip takes both from this machine's disk (torch 2.13's CPU
# wheel cannot be used: PyPI's torchvision fails to import beside it, and open_clip needs it).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/radstore synth --out $(DEMO_DIR)/cohort --n $(DEMO_N) --seed 0 --preview
	$(VENV)/bin/radstore ingest --manifest $(DEMO_DIR)/cohort/manifest.parquet --store $(DEMO_DIR)/store
	$(VENV)/bin/radstore extract --manifest $(DEMO_DIR)/cohort/manifest.parquet --store $(DEMO_DIR)/store --encoder pixels | tee $(DEMO_DIR)/pixels.out
	$(VENV)/bin/radstore train --store $(DEMO_DIR)/store --feature-set $$(tail -n 1 $(DEMO_DIR)/pixels.out) --task all --head all \
		--solver lbfgs --lr 1e-3 --max-epochs 40 --patience 8 --target-size 64 --small-refiner
	$(VENV)/bin/radstore runs --store $(DEMO_DIR)/store
	@echo "*** rad-dino with RANDOM TINY weights (no model hub here); put real weights in \$$RADSTORE_WEIGHTS_DIR/rad-dino ***"
	$(VENV)/bin/radstore extract --manifest $(DEMO_DIR)/cohort/manifest.parquet --store $(DEMO_DIR)/store --encoder rad-dino --weights random:tiny
	$(VENV)/bin/radstore store info $(DEMO_DIR)/store
	@echo "contact sheet: $(DEMO_DIR)/cohort/preview.png"

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.store_io
	$(PY) -m benchmarks.extraction
	$(PY) -m benchmarks.training
	$(PY) -m benchmarks.evaluation

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
