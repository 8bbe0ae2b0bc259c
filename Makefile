# Two entry points do all set-up on a fresh machine:
#   make demo   - build wgsef into .venv and run the main job
#   make test   - build wgsef into .venv and run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEPS   := $(VENV)/.deps-installed
BUILT  := $(VENV)/.wgsef-installed
SOURCES := $(shell find csrc python -type f -not -name '*.pyc') CMakeLists.txt pyproject.toml

.PHONY: install demo test test-all bench clean

install: $(BUILT)

$(DEPS): requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements-dev.txt
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

# the benchmark suite; BENCH_ARGS=--quick for the ~1 minute subset
bench: install
	$(BIN)/python bench/suite.py $(BENCH_ARGS)

clean:
	rm -rf build $(VENV)
