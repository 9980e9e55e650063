# The two commands the README promises: `make run` (the stack) and `make test` (the suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint bench clean

$(STAMP): setup.cfg setup.py requirements.txt test-requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e . -r test-requirements.txt
	touch $@

run: $(STAMP)
	$(BIN)/python -m sbusr.cmd.stack --config-file etc/sbusr.conf

lint: $(STAMP)
	$(BIN)/ruff check sbusr tests

test: lint
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/sbusr-bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
