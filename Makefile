# kubetune — the commands the README names live here.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_INSTALL := $(PY) -m pip install --disable-pip-version-check -c constraints.txt

.PHONY: setup test lint crds crds-check demo bench clean

## setup: create .venv and install kubetune with the trainer and dev extras (pinned by constraints.txt)
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q --upgrade "pip>=24"
	$(PIP_INSTALL) -e '.[trainer,dev]'
	touch $@

## test: the whole suite (sets itself up first)
test: setup
	$(PY) -m pytest

## lint: ruff and the import-direction rules from DESIGN.md
lint: setup
	$(VENV)/bin/ruff check operator trainer_image tests
	$(VENV)/bin/lint-imports

## crds: regenerate crds/ and the chart's CRD templates from the pydantic models
crds: setup
	$(VENV)/bin/kubetune crds

crds-check: setup
	$(VENV)/bin/kubetune crds --check

## bench: the benchmarks in docs/benchmarks.md (BENCH_ARGS passes options to hack/bench_trainer.py)
bench: bench-trainer

## bench-trainer: tokens/s of the kubetune trainer (packing) vs a padded HF Trainer + PEFT baseline, one run
bench-trainer: setup
	HF_HUB_OFFLINE=1 $(PY) hack/bench_trainer.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
