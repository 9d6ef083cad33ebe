# The README's first two commands: `make demo` (the main job) and `make test` (lint + tests).
# Both create .venv with python3 -m venv and reinstall only when pyproject.toml changed.
VENV    := .venv
PY      := $(VENV)/bin/python
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.stamp-install
DEVSTAMP := $(VENV)/.stamp-install-dev
SRC     := src tests benchmarks

.PHONY: demo test lint format bench clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(DEVSTAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,ray,keras]'
	touch $@ $(STAMP)

demo: $(STAMP)
	$(BIN)/cnnlens demo --out runs/demo

test: $(DEVSTAMP)
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)
	$(BIN)/pytest

lint: $(DEVSTAMP)
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)

format: $(DEVSTAMP)
	$(BIN)/ruff check --fix $(SRC)
	$(BIN)/ruff format $(SRC)

bench: $(DEVSTAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
