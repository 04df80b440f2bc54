# Two commands do everything: `make run` (set up + run all pipelines on the embedded data) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOK_STAMP := $(VENV)/.installed-notebook

.PHONY: install run test test-quick lint viz mlflow notebook benchmark clean-outputs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[dev,cluster]"
	touch $(STAMP)

$(NOTEBOOK_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,cluster,notebook]"
	touch $(NOTEBOOK_STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/kedro run $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -n auto --dist worksteal $(ARGS)

# The edit-and-check loop: every test but the `slow` ones (those that start processes or run whole tiny studies).
# `make test` (and CI) runs them all.
test-quick: $(STAMP)
	$(BIN)/python -m pytest -n auto --dist worksteal -m "not slow" $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

viz: $(STAMP)
	$(BIN)/kedro viz run

mlflow: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db

# JupyterLab (installed into .venv on first use) with the project's Kedro kernel; open notebooks/study.ipynb.
# As root (containers, CI machines) JupyterLab refuses to start without --allow-root.
notebook: $(NOTEBOOK_STAMP)
	$(BIN)/kedro jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) $(ARGS)

# Wall time and peak memory of each pipeline (a whole default run, one `kedro run` per pipeline under GNU time),
# then the DDPM sampler's speed and KID against diffusers' 1000-step sampler, on the generator that run trained.
# About 35 minutes on 2 CPU cores (the 1000-step sampler alone about 14); Markdown tables on stdout, JSON under
# data/08_reporting; docs/benchmarks.md has the last results. KEDRO_ENV=<env> make benchmark measures another study.
benchmark: $(STAMP)
	@test -x /usr/bin/time || { echo "make benchmark needs GNU time at /usr/bin/time (Debian: apt-get install time)"; exit 1; }
	$(BIN)/python scripts/benchmark_pipelines.py
	$(BIN)/python scripts/benchmark_sampler.py

clean-outputs:
	find data/02_intermediate data/03_primary data/04_feature data/05_model_input data/06_models \
		data/07_model_output data/08_reporting -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
