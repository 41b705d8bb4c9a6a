.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The install stamp is re-made whenever pyproject.toml changes.
STAMP := $(VENV)/.installed
ARGS ?=
# Extra flags for every pip install (PIP_FLAGS="--no-cache-dir", say).
PIP_FLAGS ?=
# Every command gets ARGS through scripts/make_args.py: split like quoted shell words, never
# brace-expanded or globbed (Hydra's {a:1,b:2} and choice(1,2) reach it as typed).
export ARGS
WITH_ARGS = $(BIN)/python scripts/make_args.py
comma := ,
space := $(empty) $(empty)
RUN ?=
CKPT ?=
INPUT ?=
OUTPUT ?=
# The runs of report and compare: SWEEP=<multirun folder>, RUNS="a b c", else every run in LOGDIR.
RUNS_ARG = $(if $(SWEEP)$(RUNS),$(if $(SWEEP),sweep=$(SWEEP)) $(if $(RUNS),runs=[$(subst $(space),$(comma),$(strip $(RUNS)))]),logdir=$(LOGDIR))
# A run (RUN=folder) or a checkpoint (CKPT=file) for eval, predict and export; neither: the newest run.
# TRUST=mypkg[,other]: packages trusted in someone else's run (docs/runs.md), for every command.
TRUST ?=
FROM = $(if $(RUN),run=$(RUN)) $(if $(CKPT),ckpt=$(CKPT)) $(if $(TRUST),trust=$(TRUST))
TRUSTING = $(if $(TRUST),MNISTLAB_TRUST=$(TRUST))
EXPORT_STAMP := $(VENV)/.export-installed
SWEEP_STAMP := $(VENV)/.sweep-installed
DIGITS_STAMP := $(VENV)/.digits-installed
LOGGERS_STAMP := $(VENV)/.loggers-installed
PORT ?= 6006
LOGDIR ?= logs

.PHONY: help install install-export install-sweep install-digits install-loggers install-all data train sweep eval predict eval-wild report compare export bench test test-slow test-slurm test-all lint tensorboard clean-logs slurm-up slurm-down

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@echo "Setting up $(VENV) (first use: a few minutes)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --progress-bar off $(PIP_FLAGS) -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project with its dev extras (the others do it on first use)

$(EXPORT_STAMP): $(STAMP)
	$(BIN)/python -m pip install --progress-bar off $(PIP_FLAGS) -e ".[dev,export]"
	@touch $(EXPORT_STAMP)

install-export: $(EXPORT_STAMP) ## Also install the optional ONNX export extras (onnx, onnxruntime, onnxscript)

$(SWEEP_STAMP): $(STAMP)
	$(BIN)/python -m pip install --progress-bar off $(PIP_FLAGS) -e ".[dev,sweep]"
	@touch $(SWEEP_STAMP)

install-sweep: $(SWEEP_STAMP) ## Also install the sweep extras (optuna, joblib and submitit launchers)

$(DIGITS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --progress-bar off $(PIP_FLAGS) -e ".[dev,digits]"
	@touch $(DIGITS_STAMP)

install-digits: $(DIGITS_STAMP) ## Also install scikit-learn, whose wheel holds the 8x8 digits of data=digits

$(LOGGERS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --progress-bar off $(PIP_FLAGS) -e ".[dev,loggers]"
	@touch $(LOGGERS_STAMP)

install-loggers: $(LOGGERS_STAMP) ## Also install the experiment trackers of logger=mlflow|wandb|comet (all offline)

ALL_STAMP := $(VENV)/.all-installed
$(ALL_STAMP): pyproject.toml
	@echo "Setting up $(VENV) with every extra (a few minutes)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --progress-bar off $(PIP_FLAGS) -e ".[dev,export,sweep,digits,loggers]"
	@touch $(STAMP) $(EXPORT_STAMP) $(SWEEP_STAMP) $(DIGITS_STAMP) $(LOGGERS_STAMP) $(ALL_STAMP)

install-all: $(ALL_STAMP) ## Create .venv with the dev extras and every optional one in one step (as CI does)

data: $(STAMP) ## Fetch and verify MNIST into data/ without training (overrides in ARGS="...")
	$(WITH_ARGS) scripts/prepare_data.py

train: $(STAMP) ## Train and test with the default config; Hydra overrides go in ARGS="..."
	$(TRUSTING) $(WITH_ARGS) mnistlab.train

sweep: $(SWEEP_STAMP) ## A multirun: ARGS="model.optimizer.lr=1e-3,3e-4" or ARGS="hparams_search=mnist_optuna"
	$(WITH_ARGS) mnistlab.train -m

eval: $(STAMP) ## Test a run as it was trained: RUN=<run folder> or CKPT=<checkpoint>, overrides in ARGS
	$(WITH_ARGS) mnistlab.lab.eval $(FROM)

predict: $(STAMP) ## Classify images or an IDX file: INPUT=<file or folder> [RUN=|CKPT=] [OUTPUT=x.csv|x.json]
	$(WITH_ARGS) mnistlab.classify.predict input=$(INPUT) $(FROM) $(if $(OUTPUT),output=$(OUTPUT))

eval-wild: $(STAMP) ## A run's accuracy per condition on digits typed in fonts and drawn by a pen (RUN=|CKPT=) [OUTPUT=folder]
	$(WITH_ARGS) mnistlab.classify.wild $(FROM) $(if $(OUTPUT),output=$(OUTPUT))

report: $(STAMP) ## Results over seeds per config (n, mean, std, 95% CI), curve figures: SWEEP=<folder>, RUNS="a b c" or LOGDIR=
	$(WITH_ARGS) mnistlab.lab.report $(RUNS_ARG)

compare: $(STAMP) ## Runs side by side: differing config keys, metrics, differences, t-test p (RUNS="a b" or SWEEP=)
	$(WITH_ARGS) mnistlab.lab.compare $(RUNS_ARG)

export: $(EXPORT_STAMP) ## safetensors + JSON + ONNX beside a run's checkpoints (RUN=|CKPT=), parity-checked
	$(WITH_ARGS) mnistlab.lab.export $(FROM)

bench: $(STAMP) ## Time the template against plain PyTorch and the origin loop (ARGS="--quick" for ~2 min)
	$(WITH_ARGS) scripts/bench.py

# The fast tier's test files run on every core at once (pytest-xdist; a file's tests stay on one
# worker, so its shared fixtures are made once): most of its time is processes starting up.
# TEST_WORKERS=0 runs them in this process, one after another.
TEST_WORKERS ?= auto

test: lint ## Lint, then the fast test tier (offline)
	$(BIN)/python -m pytest -m "not real_data and not slow and not slurm" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-slow: $(STAMP) ## The slow tier: signals and kill -9 on real processes, sweeps, DDP, a TensorBoard server
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-slurm: $(STAMP) ## The SLURM tier: a real two-node cluster on this machine (installs slurm-wlm as root)
	$(BIN)/python -m pytest -m slurm $(PYTEST_ARGS)

test-all: lint ## Every tier; the real-data one needs MNIST_DATA_DIR=<folder holding MNIST/raw/>
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check and ruff format --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

tensorboard: $(STAMP) ## TensorBoard on LOGDIR (default logs/), bound to 127.0.0.1:PORT (default 6006); PIN="val/acc val/loss" tops its first screen
	@$(BIN)/python scripts/serve_tensorboard.py "$(LOGDIR)" "$(PORT)" $(PIN)

clean-logs: ## Delete every run under logs/
	find logs -mindepth 1 -maxdepth 1 ! -name .gitkeep -exec rm -rf {} +

slurm-up: ## Start a two-node SLURM cluster on this machine (logs/slurm/); then: export SLURM_CONF=...
	scripts/slurm_cluster.sh up

slurm-down: ## Stop the local SLURM cluster's processes (only those slurm-up started)
	scripts/slurm_cluster.sh down
