# fma-genre: `make help` lists the targets and the variables they take.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# --- configuration (override on the command line: make train EPOCHS=30) -----
PYTHON   ?= python3
TORCH    ?= torch==2.13.0
VENV     ?= .venv
FMA_DIR  ?= data
SUBSET   ?= large
UNPACK   ?= 1
AUDIO_ZIP ?=
RECIPES  ?= reference
TARGET   ?=
TASK     ?=
JOBS     ?= $(shell nproc 2>/dev/null || echo 2)
# Multi-label sets and runs get their own default folders (TARGET=genres_all, TASK=multilabel).
GENRES_SET := $(if $(or $(filter genres_all,$(TARGET)),$(filter multilabel,$(TASK))),-genres)
SHARDS   ?= shards/fma_$(SUBSET)$(GENRES_SET)
MODEL    ?= seed
EPOCHS   ?= 20
# TASK=multilabel trains the multi-label recipe unless CONFIG says otherwise.
CONFIG   ?= $(if $(filter multilabel,$(TASK)),multilabel)
DEVICE   ?= auto
NPROC    ?= 1
NODES    ?= 1
GPUS     ?= $(NPROC)
RUN      ?= runs/$(or $(CONFIG),$(MODEL))-$(SUBSET)$(if $(filter multilabel,$(TASK)),$(if $(filter multilabel,$(CONFIG)),,-multilabel))
BACKEND  ?= local
SCHEDULER ?=
SLURM_ARGS ?=
DEMO_DIR ?= data/mini-fma
DEMO_TRACKS ?= 400
# make demo TASK=multilabel: shards with every genre (TARGET=genres_all) and a multi-label run, beside the plain demo's
DEMO_ML  := $(if $(filter multilabel,$(TASK)),-multilabel)
DEMO_SHARDS ?= shards/demo$(DEMO_ML)
DEMO_RUN ?= runs/demo$(DEMO_ML)
PYTEST_ARGS ?=

PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp

.PHONY: help setup demo check lint test-suite test-fast features finalize verify train test download \
        features-slurm train-slurm bench clean

help: ## this list
	@echo "fma-genre: FMA genre classifier. Targets:"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-15s %s\n", $$1, $$2}'
	@echo "Variables (current value):"
	@echo "  FMA_DIR=$(FMA_DIR)  holds fma_metadata/ and fma_<subset>/ as FMA's zips unpack"
	@echo "  SUBSET=$(SUBSET)  small | medium | large (nested, as FMA defines them)"
	@echo "  UNPACK=$(UNPACK)  download: 0 keeps the audio as fma_<subset>.zip (features reads it directly)"
	@echo "  AUDIO_ZIP=$(AUDIO_ZIP)  features: read the MP3s from this zip (default: FMA_DIR/fma_<subset>/, else its zip)"
	@echo "  RECIPES=$(RECIPES)  features: the image recipe; reference,fine also stores the finer image (CONFIG=chunks and ensemble train on it)"
	@echo "  TARGET=$(TARGET)  features: genres_all = every track with a genre, multi-hot over all of genres.csv (default: genre_top)"
	@echo "  JOBS=$(JOBS)  worker processes for features and for unpacking downloads"
	@echo "  SHARDS=$(SHARDS)  where the HDF5 shard set is written / read"
	@echo "  MODEL=$(MODEL)  EPOCHS=$(EPOCHS)  DEVICE=$(DEVICE) (auto | cuda | cpu)"
	@echo "  CONFIG=$(CONFIG)  a recipe in train/configs/ (chunks: the one to use, needs RECIPES=reference,fine; ensemble | reference | strong | ...); its model and epochs hold unless MODEL / EPOCHS are given"
	@echo "  TASK=$(TASK)  train, test, demo: multilabel = every genre of the taxonomy (shards made with TARGET=genres_all; the recipe CONFIG=multilabel unless CONFIG is given; default: single)"
	@echo "  NPROC=$(NPROC)  training processes per node (one per GPU; >1 runs torchrun)"
	@echo "  NODES=$(NODES)  GPUS=$(GPUS)  train-slurm: nodes, and GPUs requested per node (0: CPU with gloo)"
	@echo "  RUN=$(RUN)  run folder: checkpoints, config, TensorBoard, test_report.json"
	@echo "  BACKEND=$(BACKEND)  local | dask (with SCHEDULER=tcp://host:port or a scheduler file)"
	@echo "  SLURM_ARGS=$(SLURM_ARGS)  extra options for features-slurm, e.g. \"--partition p --cpus-per-task 8\""
	@echo "  PYTHON=$(PYTHON)  TORCH=$(TORCH)  (setup: a torch already importable in PYTHON is kept)"

$(STAMP): pyproject.toml
	@set -e; \
	if $(PYTHON) -c 'import torch' 2>/dev/null; then \
	  echo "setup: torch is importable in $(PYTHON); the venv reuses it"; \
	  $(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
	  $(PYTHON) -m venv $(VENV); \
	  $(VENV)/bin/pip install -q $(TORCH); \
	fi; \
	$(VENV)/bin/pip install -q -e '.[dev]'; \
	touch $(STAMP)

setup: $(STAMP) ## make .venv and install the project with its dev extras

demo: $(STAMP) ## whole pipeline on a generated mini-FMA (no download needed; TASK=multilabel: every genre)
	$(PY) -m preprocess.synth --out "$(DEMO_DIR)" --tracks $(DEMO_TRACKS) --seed 0
	$(MAKE) --no-print-directory features FMA_DIR="$(DEMO_DIR)" SUBSET=large SHARDS="$(DEMO_SHARDS)" \
	  $(if $(DEMO_ML),TARGET=genres_all)
	$(MAKE) --no-print-directory train SHARDS="$(DEMO_SHARDS)" RUN="$(DEMO_RUN)" EPOCHS=$(if $(filter command line,$(origin EPOCHS)),$(EPOCHS),8)
	$(MAKE) --no-print-directory test SHARDS="$(DEMO_SHARDS)" RUN="$(DEMO_RUN)"

check: lint test-suite ## lint + the test suite (what CI runs)

lint: $(STAMP) ## ruff check + ruff format --check (fix formatting: .venv/bin/ruff format <dirs>)
	$(VENV)/bin/ruff check shards preprocess train tests bench
	$(VENV)/bin/ruff format --check shards preprocess train tests bench

test-suite: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## the tests for the edit-test loop: no slow or cluster test (make check runs all)
	$(PY) -m pytest -m "not slow and not cluster" $(PYTEST_ARGS)

features: $(STAMP) ## decode every top-genre track (TARGET=genres_all: every track with a genre) of SUBSET into HDF5 shards in SHARDS
	$(PY) -m preprocess features --fma-dir "$(FMA_DIR)" --subset $(SUBSET) --out "$(SHARDS)" \
	  --recipes "$(RECIPES)" --jobs $(JOBS) --backend $(BACKEND) $(if $(SCHEDULER),--scheduler "$(SCHEDULER)") \
	  $(if $(AUDIO_ZIP),--audio-zip "$(AUDIO_ZIP)") $(if $(TARGET),--target $(TARGET))

finalize: $(STAMP) ## write SHARDS/manifest.json once every shard exists (says which are missing)
	$(PY) -m preprocess finalize "$(SHARDS)"

verify: $(STAMP) ## check every shard in SHARDS against the manifest
	$(PY) -m preprocess verify "$(SHARDS)"

features-slurm: $(STAMP) ## submit the features stage as a SLURM array + finalize job (SLURM_ARGS=...)
	$(PY) -m preprocess slurm --fma-dir "$(FMA_DIR)" --subset $(SUBSET) --out "$(SHARDS)" \
	  --recipes "$(RECIPES)" $(if $(AUDIO_ZIP),--audio-zip "$(AUDIO_ZIP)") $(if $(TARGET),--target $(TARGET)) \
	  $(SLURM_ARGS)

# NPROC > 1: one machine, NPROC processes through torchrun (`-m --` keeps torchrun's parser off --run).
TRAIN_LAUNCH = $(if $(filter-out 1,$(NPROC)),$(PY) -m torch.distributed.run --standalone --nproc-per-node $(NPROC) -m --,$(PY) -m)
# With CONFIG the YAML file decides model and epochs, unless MODEL / EPOCHS are given on the command line.
given = $(filter command line,$(origin $(1)))
TRAIN_FLAGS = $(if $(CONFIG),--config "$(1)train/configs/$(CONFIG).yaml" $(if $(call given,MODEL),--model $(MODEL)) \
  $(if $(call given,EPOCHS),--epochs $(EPOCHS)),--model $(MODEL) --epochs $(EPOCHS)) $(if $(TASK),--task $(TASK))

train: $(STAMP) ## train MODEL (or a recipe: CONFIG=chunks, the one to use, or ensemble|reference|strong; TASK=multilabel) on SHARDS into RUN (NPROC=N: N processes/GPUs via torchrun)
	$(TRAIN_LAUNCH) train fit --shards "$(SHARDS)" --run "$(RUN)" $(call TRAIN_FLAGS) --device $(DEVICE)

train-slurm: $(STAMP) ## submit training to SLURM: NODES x NPROC processes (cluster/train.sbatch; SLURM_ARGS=...)
	mkdir -p "$(RUN)/slurm"
	sbatch --nodes=$(NODES) --ntasks-per-node=1 $(if $(filter-out 0,$(GPUS)),--gpus-per-node=$(GPUS)) \
	  --output="$(abspath $(RUN))/slurm/train-%j.out" $(SLURM_ARGS) cluster/train.sbatch \
	  "$(abspath $(PY))" "$(CURDIR)" $(NPROC) "$(abspath $(RUN))" --shards "$(abspath $(SHARDS))" \
	  $(call TRAIN_FLAGS,$(CURDIR)/) --device $(DEVICE)

test: $(STAMP) ## evaluate the best checkpoint in RUN on the test split: RUN/test_report.json
	$(PY) -m train test --shards "$(SHARDS)" --run "$(RUN)" --device $(DEVICE)

download: $(STAMP) ## fetch and unpack FMA's zips for SUBSET (+ metadata) into FMA_DIR (UNPACK=0: keep the zip)
	$(PY) -m preprocess download --fma-dir "$(FMA_DIR)" --subset $(SUBSET) --jobs $(JOBS) \
	  $(if $(filter 0,$(UNPACK)),--no-unpack)

bench: $(STAMP) ## speed benchmarks (features, dataset, unpacking, features from the zip, predict): ratios
	$(PY) bench/features.py
	$(PY) bench/dataset.py
	$(PY) bench/unpack.py
	$(PY) bench/zip_features.py
	$(PY) bench/predict.py

clean: ## remove the venv, caches and demo outputs (not data/ or your shard sets)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info shards/demo runs/demo shards/demo-multilabel \
	  runs/demo-multilabel "$(DEMO_DIR)"
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
