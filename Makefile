# Two entry points do all set-up on a fresh machine:
#   make demo   - build wgsef into .venv and run the main job
#   make test   - build wgsef into .venv and run the test suite
#
# Version pins, explained in one place:
#   TORCH_VERSION       torch for .venv, the build and test environment, installed as
#                       torch===$(TORCH_VERSION): the exact version string selects the
#                       CUDA build (2.13.0+cu130), which also runs on machines without
#                       a GPU. The CPU-only build (2.13.0+cpu) cannot load torchvision's
#                       C++ ops, and the real-model tests need torchvision.
#                       wgsef builds against any torch >= 2.10 (pyproject.toml).
#   TORCHVISION_VERSION the torchvision release that matches TORCH_VERSION.
#   TORCH_CUDA_VERSION  torch for `make cuda-check`, installed with --no-deps only to
#                       compile and link the CUDA kernels: a CUDA 13 build (+cu130),
#                       the newest release, so removals in torch's headers show early.
# requirements-dev.txt holds the other build, test and lint tools, unpinned except
# for the minimum versions the build needs.
PYTHON ?= python3
TORCH_VERSION      ?= 2.13.0
TORCH_CUDA_VERSION ?= 2.14.1
TORCHVISION_VERSION ?= 0.28.0
VENV   ?= .venv
BIN    := $(VENV)/bin
DEPS   := $(VENV)/.deps-installed
BUILT  := $(VENV)/.wgsef-installed
SOURCES := $(shell find csrc python -type f -not -name '*.pyc') CMakeLists.txt pyproject.toml

.PHONY: install demo test test-all lint format bench cuda-check clean

install: $(BUILT)

$(DEPS): requirements-dev.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "torch===$(TORCH_VERSION)" torchvision==$(TORCHVISION_VERSION) -r requirements-dev.txt
	touch $@

# --no-build-isolation: compile against the torch installed in the venv
$(BUILT): $(DEPS) $(SOURCES)
	$(BIN)/pip install -q --no-build-isolation .
	touch $@

demo: install
	$(BIN)/wgsef demo --plot

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m ''

# ruff (pyproject.toml) and clang-format (.clang-format) over the tracked sources;
# `make format` applies both
CXX_SOURCES = $(shell git ls-files 'csrc/*.h' 'csrc/*.cpp' 'csrc/*.cu' 'csrc/*.cuh')
lint: $(DEPS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/clang-format --dry-run -Werror $(CXX_SOURCES)

format: $(DEPS)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/clang-format -i $(CXX_SOURCES)

# the benchmark suite; BENCH_ARGS=--quick for the ~1 minute subset
bench: install
	$(BIN)/python bench/suite.py $(BENCH_ARGS)

# Compile-only check of the CUDA kernels against a CUDA 13 build of torch, for a
# machine without a GPU (needs the CUDA toolkit at CUDA_PATH).
CUDA_VENV ?= .venv-cuda
CUDA_PATH ?= /usr/local/cuda
cuda-check:
	$(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/pip install -q --no-deps torch==$(TORCH_CUDA_VERSION)
	$(CUDA_VENV)/bin/pip install -q numpy "scikit-build-core>=0.11" "pybind11>=2.13" "cmake>=3.27" ninja
	CUDA_PATH=$(CUDA_PATH) TORCH_CUDA_ARCH_LIST=9.0 WGSEF_CUDA=ON $(CUDA_VENV)/bin/pip wheel -q \
	  --no-build-isolation --no-deps -Cbuild-dir=build/cuda-check -w build/cuda-check/dist .
	@echo "CUDA kernels compiled and linked for sm_90"

clean:
	rm -rf build $(VENV) $(CUDA_VENV)
