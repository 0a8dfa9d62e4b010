# mmdet-eps: set-up, demo and tests. `make demo` and `make test` are the README's two commands.
#
# Set-up is idempotent and cached: a stamp in the venv records it, so a second run takes seconds.
# A torch that is already importable (for instance a CUDA build you installed, made visible with
# VENV_ARGS=--system-site-packages) is never replaced.

PYTHON ?= python3
VENV_ARGS ?=
MMCV_VERSION ?= 2.1.0
# A lane is a venv with its own torch line and its own mmcv build (README: tested torch lines):
#   default  torch 2.13 (CPU build): the README's two commands
#   legacy   torch 2.1.2 + torchvision 0.16.2 + numpy < 2 + mmpretrain 1.2.0 (the mmdet 3.3 stack)
#   current  torch 2.14.1 + torchvision 0.29.1 + mmpretrain 1.2.0
#   oldest   torch 2.0.1 + torchvision 0.15.2 + numpy < 2 + mmpretrain 1.2.0 (setup.py's floor)
# `make test-matrix` runs the legacy, current and oldest lanes.
LANE ?= default
NUMPY_SPEC ?= numpy<2.3
ifeq ($(LANE),current)
VENV ?= .venv-current
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= test,pretrain
else ifeq ($(LANE),oldest)
VENV ?= .venv-oldest
TORCH_SPEC ?= torch==2.0.1 torchvision==0.15.2
NUMPY_SPEC := numpy<2
EXTRAS ?= test,pretrain
else ifeq ($(LANE),legacy)
VENV ?= .venv-legacy
TORCH_SPEC ?= torch==2.1.2 torchvision==0.16.2
NUMPY_SPEC := numpy<2
EXTRAS ?= test,pretrain
else
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test
endif
# mmcv's wheel is built once per torch line and kept there (tools/misc/build_mmcv.py): pip's own
# cache would hand a wheel built against one torch to a venv with another.
MMCV_CACHE ?= $(HOME)/.cache/mmdet-eps/mmcv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.mmdet-eps-setup
TOY_DATA := data/toy_coco
DEMO_CONFIG := configs/toy/cascade_rcnn_ws_eps_r18_toy.py
DEMO_DIR := work_dirs/demo
PYTEST_ARGS ?=

.PHONY: setup demo test test-slow test-all test-current test-legacy test-oldest test-matrix lint toy-data \
	benchmarks clean-demo

setup: $(STAMP)

$(STAMP): setup.py Makefile mmdet_eps/ops/csrc/filter_normalize.cpp tools/misc/build_mmcv.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV_ARGS) $(VENV)
	$(PIP) install -q --upgrade pip wheel 'setuptools>=77,<81'
	$(PY) -c 'import torch' 2>/dev/null || $(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q '$(NUMPY_SPEC)' ninja packaging
	$(PY) -c 'import mmcv, mmcv.ops, sys; sys.exit(mmcv.__version__ != "$(MMCV_VERSION)")' 2>/dev/null \
	  || $(PY) tools/misc/build_mmcv.py --version $(MMCV_VERSION) --cache '$(MMCV_CACHE)'
	$(PIP) install -q --no-build-isolation -e '.[$(EXTRAS)]' '$(NUMPY_SPEC)'
	$(PY) -c 'import mmdet_eps, mmcv.ops; print("mmdet-eps set up:", mmdet_eps.__version__)'
	touch $(STAMP)

# Regenerated when the generator changes (its output is a pure function of the script).
$(TOY_DATA)/annotations/instances_val2017.json: tools/misc/make_toy_coco.py | $(STAMP)
	$(PY) tools/misc/make_toy_coco.py $(TOY_DATA) --force

toy-data: $(TOY_DATA)/annotations/instances_val2017.json

demo: setup toy-data
	$(PY) tools/train.py $(DEMO_CONFIG) --work-dir $(DEMO_DIR)
	$(PY) tools/test.py $(DEMO_CONFIG) "$$(cat $(DEMO_DIR)/last_checkpoint)" --work-dir $(DEMO_DIR)
	$(PY) tools/analysis_tools/report.py $(DEMO_DIR) --names cascade_rcnn_ws_eps_r18_toy
	@echo "Report: $(DEMO_DIR)/report.md, curves: $(DEMO_DIR)/curves.png"

# `make test`: the fast suite a contributor runs many times a day (every module, one tiny step
# where a slow test trains); `make test-slow`: the trainings, full compiles, benchmark smokes and
# multi-process runs (pytest marker `slow`); `make test-all`: both.
test: setup lint
	$(PY) -m pytest -m 'not slow' $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-all: test test-slow

# The whole suite again on the other torch lines (each its own venv and mmcv build).
test-current:
	$(MAKE) test-all LANE=current

test-legacy:
	$(MAKE) test-all LANE=legacy

test-oldest:
	$(MAKE) test-all LANE=oldest

test-matrix: test-legacy test-current test-oldest

lint: setup
	$(PY) -m ruff check .

benchmarks: setup
	$(PY) benchmarks/run_all.py

clean-demo:
	rm -rf $(DEMO_DIR)
