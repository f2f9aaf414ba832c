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
# Test images that nearly repeat a training image under another patient id: what the embedding
# health's leakage audit must find (listed in the report; ground truth in near_duplicates.parquet).
DEMO_DUPLICATES ?= 3
# One scanner vendor whose findings are fainter: what the evaluation's subgroup analysis must
# find (ground truth in subgroup_effect.json beside the manifest).
DEMO_SUBGROUP_EFFECT ?= manufacturer=VendorC
DEMO_SUBGROUP_STRENGTH ?= 0.8
PYTEST_ARGS ?=
REBUILD_DIR ?= rebuild-check
REBUILD_N ?= 100
REBUILD_CONFIG ?= configs/rebuild-check.yaml

.PHONY: demo test test-fast lint format bench venv clean constraints rebuild-check

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

# Does a venv rebuilt from constraints.txt reproduce the numbers? The small study of
# $(REBUILD_CONFIG) runs with this .venv, then with a venv that `make venv` builds from scratch
# in a copy of the working tree (git ls-files -co --exclude-standard: tracked and untracked files,
# not ignored ones), on one cohort, each with a fresh RADSTORE_CACHE (random:tiny models rebuilt
# from their seeds) and PREFECT_HOME. Both runs import radstore from that copy, so only the
# environment differs. infra/rebuild_check.py snapshots both stores (feature-set ids, runs,
# evaluations, every metric row, floats bit for bit) and compares them: exit 1 on any difference.
# Snapshots, stores and logs in $(REBUILD_DIR)/; the copy and its venv (~7 GB) are in a temp
# dir removed at the end. Several minutes, mostly pip.
rebuild-check: $(STAMP)
	@set -euo pipefail; \
	out="$(abspath $(REBUILD_DIR))"; venv="$(abspath $(VENV))"; \
	rm -rf "$$out"; mkdir -p "$$out"; \
	tmp=$$(mktemp -d "$${TMPDIR:-/tmp}/radstore-rebuild-check.XXXXXX"); trap 'rm -rf "$$tmp"' EXIT; \
	echo "rebuild-check: copy of the working tree in $$tmp/src"; \
	mkdir "$$tmp/src"; \
	git ls-files -z -co --exclude-standard | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$$tmp/src"; \
	cd "$$tmp/src"; \
	echo "rebuild-check: cohort of $(REBUILD_N) images in $$out/cohort"; \
	"$$venv/bin/python" -m flows.cli synth --out "$$out/cohort" --n $(REBUILD_N) --split $(DEMO_SPLIT) --seed 0 \
		--min-side 256 --max-side 384 --quiet; \
	study() { \
		mkdir -p "$$out/$$2/cache" "$$out/$$2/prefect"; \
		"$$1" -m pip freeze --exclude-editable > "$$out/$$2-freeze.txt"; \
		echo "rebuild-check: study with $$1 (log $$out/$$2.log)"; \
		RADSTORE_CACHE="$$out/$$2/cache" PREFECT_HOME="$$out/$$2/prefect" "$$1" -m flows.cli study --config $(REBUILD_CONFIG) \
			--store "$$out/$$2/store" --manifest "$$out/cohort/manifest.parquet" --report "$$out/$$2/report" > "$$out/$$2.log" 2>&1 \
			|| { echo "rebuild-check: the study failed, see $$out/$$2.log"; return 1; }; \
		"$$1" infra/rebuild_check.py snapshot --store "$$out/$$2/store" --out "$$out/$$2.json"; \
	}; \
	study "$$venv/bin/python" before; \
	echo "rebuild-check: a fresh venv from constraints.txt: make venv in the copy (log $$out/venv.log)"; \
	$(MAKE) --no-print-directory -C "$$tmp/src" venv PYTHON="$(PYTHON)" > "$$out/venv.log" 2>&1 \
		|| { echo "rebuild-check: make venv failed, see $$out/venv.log"; exit 1; }; \
	study "$$tmp/src/$(VENV)/bin/python" after; \
	if cmp -s "$$out/before-freeze.txt" "$$out/after-freeze.txt"; then echo "rebuild-check: same packages in both venvs"; \
	else echo "rebuild-check: the venvs' packages differ:"; diff "$$out/before-freeze.txt" "$$out/after-freeze.txt" || true; fi; \
	"$$venv/bin/python" infra/rebuild_check.py compare "$$out/before.json" "$$out/after.json" | tee "$$out/compare.txt"; \
	echo "rebuild-check: passed in $${SECONDS}s"

demo: $(STAMP)
	$(VENV)/bin/radstore synth --out $(DEMO_DIR)/cohort --n $(DEMO_N) --split $(DEMO_SPLIT) --seed 0 --preview --quiet \
		--near-duplicates $(DEMO_DUPLICATES) --subgroup-effect $(DEMO_SUBGROUP_EFFECT) \
		--subgroup-effect-strength $(DEMO_SUBGROUP_STRENGTH)
	$(VENV)/bin/radstore study --config configs/demo.yaml --store $(DEMO_DIR)/store \
		--manifest $(DEMO_DIR)/cohort/manifest.parquet --report $(DEMO_DIR)/report
	@echo
	@echo "contact sheet of the cohort: $(DEMO_DIR)/cohort/preview.png"
	@echo "embedding health (collapse, CKA with the controls, the planted near-duplicates, drift): .venv/bin/radstore health --store $(DEMO_DIR)/store"
	@echo "the planted subgroup (fainter findings on $(DEMO_SUBGROUP_EFFECT)): .venv/bin/radstore query --store $(DEMO_DIR)/store \"SELECT task, encoder, subgroup, round(value, 3) AS auroc, round(diff_vs_rest, 3) AS diff, round(p_holm, 4) AS p_holm FROM subgroups WHERE \\\"column\\\" = 'manufacturer' AND metric = 'auroc' ORDER BY task, encoder, subgroup\""
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
	rm -rf $(DEMO_DIR) $(REBUILD_DIR) .pytest_cache
