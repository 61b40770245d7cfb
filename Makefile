# Two commands set up a fresh machine: `make run` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# torch: the CPU build by default (no CUDA wheels, no NVIDIA packages), the GPU build on request:
#   make install TORCH=cuda [TORCH_CUDA=cu128]
# The CPU build comes from a local wheel where this machine has one (pip's find-links, e.g.
# /opt/wheels/torch-2.13.0+cpu-*.whl), else from PyTorch's CPU index. The choice is remembered in
# $(VENV)/.torch, so a later `make run` keeps the build that `make install TORCH=cuda` chose.
TORCH ?= $(shell cat $(VENV)/.torch 2>/dev/null || echo cpu)
TORCH_VERSION := 2.13.0
TORCH_CUDA ?= cu128
TORCH_INDEX := https://download.pytorch.org/whl
TORCH_WHEELS ?= $(or $(PIP_FIND_LINKS),/opt/wheels)
LOCAL_TORCH := $(firstword $(wildcard $(addsuffix /torch-$(TORCH_VERSION)+cpu-*.whl,$(TORCH_WHEELS))))
ifeq ($(TORCH),cuda)
TORCH_PIP := 'torch==$(TORCH_VERSION)+$(TORCH_CUDA)' --extra-index-url $(TORCH_INDEX)/$(TORCH_CUDA)
else ifeq ($(TORCH),cpu)
TORCH_PIP := $(or $(LOCAL_TORCH),'torch==$(TORCH_VERSION)+cpu' --extra-index-url $(TORCH_INDEX)/cpu)
else
$(error TORCH must be cpu or cuda, got '$(TORCH)')
endif
STAMP := $(VENV)/.installed-$(TORCH)

.PHONY: venv install run lint test test-fast bench train-vision clean system-deps web

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, the pinned build chosen above, so the project's range installs nothing more.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH_PIP)
	$(BIN)/pip install -q -e '.[test]'
	echo $(TORCH) > $(VENV)/.torch
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# The page's viewer (NiiVue): npm installs it from the lock file; the service serves its browser bundle
# from node_modules (never committed).
WEB := service/web
WEB_STAMP := $(WEB)/node_modules/.installed
$(WEB_STAMP): $(WEB)/package.json $(WEB)/package-lock.json
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

web: $(WEB_STAMP)

venv install: $(STAMP) $(WEB_STAMP)

run: $(STAMP) $(WEB_STAMP)
	$(BIN)/voxagent serve

# redis-server: the service's integration tests start a real one; chromium: the page's browser tests
# (Debian packages; Playwright drives the system chromium, it downloads no browser); orthanc and its
# DICOMweb plugin: the PACS of the DICOM routing test (tests/service/test_orthanc.py).
system-deps:
	command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
	test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so || (apt-get update -qq && apt-get install -y -qq orthanc orthanc-dicomweb)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# ruff on everything, mypy on the packages listed in pyproject's [tool.mypy] files
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint system-deps $(WEB_STAMP)
	$(BIN)/python -m pytest tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow and not integration"

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	@for m in bench/*.py; do n=$$(basename $$m .py); [ "$$n" = "__init__" ] || [ "$$n" = "common" ] || $(BIN)/python -m bench.$$n || exit 1; done

# Stage-1 vision run: starts or resumes checkpoints/vision_v2 (SIGTERM or Ctrl-C saves the last step).
HOURS ?= 2
train-vision: $(STAMP)
	$(BIN)/python -m training.vision_pretrain --run checkpoints/vision_v2 --config training/configs/vision_v2.json --hours $(HOURS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
