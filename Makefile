# The targets the README names. Everything runs from the virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
EXTRAS ?= dev,synth,triton,export,serve
PYTEST_ARGS ?=

.PHONY: setup system-deps demo test test-slow bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Install the CPU build of torch first where no torch is present: an unpinned torch from PyPI is a
# multi-GB CUDA build. Users with a GPU install their torch before `make setup`, and it is kept.
setup: $(PY) system-deps
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[$(EXTRAS)]"

system-deps:
	bash tools/install_system_deps.sh

demo: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash recipes/synth/run.sh

test: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	for b in tools/bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
