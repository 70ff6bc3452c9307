# Two commands set up and run everything on a fresh machine with Python 3.11:
#   make demo   create .venv, install pinned dependencies, train and evaluate
#               shortrun on digits
#   make test   same set-up, then the test suite
# Both install keras_ebm itself into .venv (editable).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# --no-deps: the lock is complete, and the resolver would otherwise pull
	# the full `tensorflow` wheel in through tf-keras.
	$(PY) -m pip install --quiet --no-deps -r requirements.lock -r requirements-dev.lock
	# keras_ebm itself, editable, so that `import keras_ebm` works from any
	# folder; the build uses the pinned setuptools (no isolation, offline).
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The digits classifier gives the FID features; it trains once (~20 s).
demo: $(STAMP)
	$(PY) train.py --regime=classifier --dataset=digits
	$(PY) train.py
	$(PY) evaluate.py

# Three processes on two cores, whole files each (a file's module fixtures
# stay together): the suite's TensorFlow work, its process start-ups and its
# waits on subprocesses overlap (two processes left a fifth of the CPU idle).
test: $(STAMP)
	$(PY) -m pytest -q -n 3 --dist=loadfile

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/suite.py --json=benchmarks/suite.json

clean:
	rm -rf $(VENV) runs .pytest_cache
