# One command sets everything up and runs the main job (`make demo`); one sets
# everything up and runs the tests (`make test`). Both create the virtual
# environment, install torch/torchvision and build the kernels on first use.
#
#   make demo           lthfast imp: IMP of a small Faster R-CNN on the built-in shapes data
#   make test           the whole test suite (CUDA tests skip without a GPU)
#   make bench          lthfast bench all (baseline and lthfast in the same run)
#   LTHFAST_CUDA=0 make test   CPU-only build, for quick local iteration
#
# Build knobs (see setup.py): LTHFAST_CUDA=0, FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST,
# MAX_JOBS (default 2), LTHFAST_DEBUG=1.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
TEST_DEPS := pytest hypothesis pytest-benchmark expecttest tabulate tqdm numpy ninja matplotlib \
             pycocotools safetensors
export MAX_JOBS ?= 2

SOURCES := $(shell find csrc -type f) setup.py pyproject.toml

.PHONY: setup demo test bench build clean

$(VENV)/.deps-installed:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install --no-cache-dir $(TORCH_SPEC)
	$(PY) -m pip install -q --no-cache-dir $(TEST_DEPS)
	touch $@

# Rebuilds the extension when a source changed (or `make clean` was run).
$(VENV)/.lthfast-built: $(VENV)/.deps-installed $(SOURCES)
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	$(PY) -m lthfast.info
	touch $@

build setup: $(VENV)/.lthfast-built

demo: setup
	$(VENV)/bin/lthfast imp --out runs/demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(VENV)/bin/lthfast bench all --json bench/results/latest.json

clean:
	rm -rf build lthfast/_C*.so $(VENV)/.lthfast-built
