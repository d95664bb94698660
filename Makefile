# PNU-Repro. Two commands do everything on a fresh machine with Python >= 3.11 and make:
#   make reproduce PAPER=ucl      (tables, plots and claims of one paper, mini scale, CPU, minutes)
#   make test
# Options: make reproduce PAPER=<key> TABLE=<id> SCALE=mini|paper SEEDS=3|11,12,13 (default: the paper's `seeds`, else 3) LAUNCHER=local|submitit_local|slurm
#          LOGGER=csv|wandb|none OVERRIDES="trainer.max_epochs=5 ..." (every run)
#          HYDRA_ARGS="hydra.launcher.partition=gpu ..." (the launcher) ARGS="force=true columns=[sym-40%]" (reproduce)
#   make summary                  (confirmatory verdicts of every committed table, per paper and in total)
#   make list                     (every paper: family, tables, mini time, verdicts, what paper scale needs)
#   make report                   (results/index.html: every table, plot and claim, browsable offline)
#   make reproduce PAPER=all [FAMILY=<family>]   (every paper, or one family, one after another)
#   make fetch PAPER=<key> [TABLE=<id>] [DRY=1]  (download a paper-scale table's hub data and weights)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

PAPER ?= ucl
FAMILY ?=
TABLE ?=
SCALE ?= mini
SEEDS ?=
LAUNCHER ?= local
LOGGER ?=
ARGS ?=
OVERRIDES ?=
HYDRA_ARGS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=

comma := ,
space := $(eval) $(eval)
seeds_arg = $(if $(strip $(SEEDS)),$(if $(findstring $(comma),$(SEEDS)),seeds=[$(SEEDS)],seeds=$(SEEDS)))
# "a=1 b=2" -> "name=['a=1','b=2']" (Hydra needs list items that contain '=' quoted)
list_arg = $(if $(strip $(2)),"$(1)=[$(subst $(space),$(comma),$(foreach x,$(strip $(2)),'$(x)'))]")

.PHONY: install reproduce summary list report fetch test test-fast lint format bench bench-quick clean

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "PNU-Repro needs Python >= 3.11; run make with PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(INSTALLED)

install: $(INSTALLED)

reproduce: $(INSTALLED)
	$(PY) -m common.reproduce paper=$(PAPER) scale=$(SCALE) $(seeds_arg) launcher=$(LAUNCHER) \
		$(if $(TABLE),table=$(TABLE)) $(if $(FAMILY),family=$(FAMILY)) $(if $(LOGGER),logger=$(LOGGER)) \
		$(call list_arg,overrides,$(OVERRIDES)) $(call list_arg,hydra_args,$(HYDRA_ARGS)) $(ARGS)

summary: $(INSTALLED)
	$(PY) -m common.results.summary

list: $(INSTALLED)
	$(PY) -m common.results.listing

report: $(INSTALLED)
	$(PY) -m common.results.report

fetch: $(INSTALLED)
	$(PY) -m common.fetch paper=$(PAPER) $(if $(TABLE),table=$(TABLE)) $(if $(DRY),dry_run=true)

test: $(INSTALLED)
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

test-fast: $(INSTALLED)
	$(PY) -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

lint: $(INSTALLED)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(INSTALLED)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: $(INSTALLED)
	$(PY) -m benchmarks.harness_overhead
	$(PY) -m benchmarks.kernels $(BENCH_ARGS)

bench-quick: $(INSTALLED)
	$(PY) -m benchmarks.harness_overhead --repeats 1
	$(PY) -m benchmarks.kernels --quick

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
