# The two commands of the README: `make demo` and `make test`.
# Both create (or reuse) .venv on a fresh clone and install what they need.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
# Reinstall whenever the packaging files change.
STAMP := $(VENV)/.installed-$(shell cat setup.py constraints.txt pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install test lint demo bench clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "anti_scaling needs Python 3.11, got " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python setup.py constraints.txt pyproject.toml
	rm -f $(VENV)/.installed-*
	# ParlAI without its dependency list (see setup.py for why), then our package.
	$(PIP) install -q -c constraints.txt --no-deps parlai==1.7.2
	$(PIP) install -q -c constraints.txt -e '.[test,dev,fairseq,hf,search,serve]'
	# torchvision/torchtext/torchaudio cannot load against torch 2.13 (and
	# transformers fails on import when torchaudio is present); never leave them.
	$(PIP) uninstall -q -y torchvision torchtext torchaudio 2>/dev/null || true
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/black --check --quiet anti_scaling tests experiments
	$(BIN)/ruff check anti_scaling tests experiments

test: lint
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python -m anti_scaling.scripts.demo

# Under 20 minutes on 2 CPU cores; its last line is one JSON object of every figure.
bench: $(STAMP)
	$(BIN)/python -m anti_scaling.scripts.benchmark_step --threads 1 --clock cpu

# The GPU checks (experiments/gpu_check.py). The GPU machine has its own CUDA
# torch and no ParlAI, and no package registry: `make gpu-wheels` (here) puts
# ParlAI, what it imports that the machine lacks, and this project, as wheels,
# in $(WHEELS)/ (ignored by git: carry it); `make gpu-check` (there) installs
# them without dependencies next to that torch and writes $(GPU_OUT).
WHEELS := .whl
GPU_PYTHON ?= python3
GPU_SITE ?= /tmp/site
GPU_OUT ?= $(if $(OUT),$(OUT),runs)/gpu_check.json
GPU_WHEELS := parlai==1.7.2 setuptools==80.10.2 iopath==0.1.10 subword-nmt==0.3.8 mock==5.2.0 chitchat-dataset==0.9.0
.PHONY: gpu-wheels gpu-check
gpu-wheels: $(STAMP)
	rm -rf $(WHEELS) && mkdir -p $(WHEELS)
	$(PIP) wheel -q --no-deps -c constraints.txt -w $(WHEELS) $(GPU_WHEELS)
	$(PIP) wheel -q --no-deps -w $(WHEELS) .

gpu-check:
	$(GPU_PYTHON) -c 'import parlai' 2>/dev/null || $(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $(GPU_SITE) $(WHEELS)/*.whl
	PYTHONPATH=$(GPU_SITE)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PYTHON) -m experiments.gpu_check --out $(GPU_OUT)

clean:
	rm -rf $(VENV) build *.egg-info

# The chitchat distillation experiment (docs/chitchat_results.md). Long-running
# (teacher 42 min, students 48 min, report 7 min on 2 CPU cores): run it in the
# background, e.g. `nohup make chitchat-experiment > runs/chitchat.log 2>&1 &`.
# Finished steps are skipped on a rerun; models and logs go to runs/chitchat.
# The teacher trains until its validation perplexity has not improved for
# TEACHER_PATIENCE validations (5 minutes apart), TEACHER_MINUTES per sitting:
# run `make chitchat-teacher` again to continue from its checkpoint.
# `make chitchat-report` always rebuilds the report from the trained models.
TEACHER_PATIENCE ?= 4
TEACHER_MINUTES ?= 42
TEACHER_FLAGS = --teacher-patience $(TEACHER_PATIENCE) --teacher-minutes $(TEACHER_MINUTES)
.PHONY: chitchat-teacher chitchat-experiment chitchat-report
chitchat-teacher: $(STAMP)
	$(BIN)/python -m experiments.chitchat_experiment teacher --out runs/chitchat $(TEACHER_FLAGS)

chitchat-experiment: $(STAMP)
	$(BIN)/python -m experiments.chitchat_experiment all --out runs/chitchat --docs docs/chitchat $(TEACHER_FLAGS)

chitchat-report: $(STAMP)
	$(BIN)/python -m experiments.chitchat_experiment report --force --out runs/chitchat --docs docs/chitchat
