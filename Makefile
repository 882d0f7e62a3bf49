# Two entry points for a fresh machine: `make run` (whole pipeline on the embedded default) and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON := $(or $(PYTHON),$(shell command -v python3))
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export PATH := $(abspath $(BIN)):$(PATH)
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export YOLO_OFFLINE := 1
export YOLO_AUTOINSTALL := 0

.PHONY: install run test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt --config-settings editable_mode=compat -e '.[dev]' 2>&1 | { grep -v "is ignored: it is neither" || true; }
	touch $@

run: $(STAMP)
	$(BIN)/python -m tasks.stage_deps --check   # dvc.yaml lists every module each stage imports
	$(BIN)/python -c "from tasks.params import load_params; from tasks.explain_jobs import check_jobs; check_jobs(load_params(), before_stages=True)"   # explain jobs' methods / options, before any training
	$(BIN)/dvc repro

test: $(STAMP)
	$(BIN)/ruff check .   # lint and complexity bound: [tool.ruff] in pyproject.toml
	$(BIN)/python -m pytest -q -n 2 --dist loadfile   # two worker processes (the 2-core CI), one test file per worker at a time

# The benchmarks in the order benchmarks/README.md reports them; shapley tunes the peers' configurations on the tuning
# split before the held-out run; pipeline needs the pipeline's data (make run first). Numbers: benchmarks/results/.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt captum shap shapiq 2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(BIN)/python benchmarks/bench_synthetic.py
	$(BIN)/python benchmarks/bench_models.py
	$(BIN)/python benchmarks/bench_parts.py
	$(BIN)/python benchmarks/bench_explainers.py
	$(BIN)/python benchmarks/bench_shapley.py --split tune
	$(BIN)/python benchmarks/bench_shapley.py --split heldout
	$(BIN)/python benchmarks/bench_quality.py --models detector
	$(BIN)/python benchmarks/bench_quality.py --models classifier
	$(BIN)/python benchmarks/bench_pipeline.py --images 96
	$(BIN)/python benchmarks/bench_grid_detector_speed.py
	$(BIN)/python benchmarks/bench_learned_stage.py   # the explain stage's timings of the last make run

clean:
	rm -rf $(VENV) data/pulled data/pulled.* metrics
