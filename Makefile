# The two commands the README promises: `make run` (the stack) and `make test` (the suite).
# Both share .venv: every install step runs under one lock (flock), so starting them at the same
# time in two terminals is safe; the second waits for the first and then finds little to do.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := $(VENV).lock
# sbusr and its runtime dependencies (make run)
RUN_STAMP := $(VENV)/.run-stamp
# ...plus the test tools: pytest, ruff, mypy, tox (make test; the name CI and older checkouts use)
TEST_STAMP := $(VENV)/.installed-stamp
INSTALL := flock $(LOCK)

.PHONY: run test tools lint typecheck bench genconfig clean

$(RUN_STAMP): setup.cfg setup.py requirements.txt
	$(INSTALL) sh -c '$(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install -q --upgrade pip && \
	  $(BIN)/python -m pip install -q -e . && touch $@'

$(TEST_STAMP): $(RUN_STAMP) test-requirements.txt
	$(INSTALL) sh -c '$(BIN)/python -m pip install -q -e . -r test-requirements.txt && touch $@'

# the test tools in .venv, without running anything (`.venv/bin/python -m pytest ...` afterwards)
tools: $(TEST_STAMP)

run: $(RUN_STAMP)
	$(BIN)/python -m sbusr.cmd.stack --config-file etc/sbusr.conf

lint: $(TEST_STAMP)
	$(BIN)/ruff check sbusr tests

# mypy on sbusr/ as setup.cfg's [mypy] section configures it
typecheck: $(TEST_STAMP)
	$(BIN)/mypy

# the suite waits far more than it computes: TEST_WORKERS pytest-xdist workers, a test file per worker
TEST_WORKERS ?= 5

test: lint typecheck
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

bench: $(RUN_STAMP)
	$(BIN)/sbusr-bench

# etc/sbusr.conf.sample from etc/oslo-config-generator/sbusr.conf (same as `tox -e genconfig`)
genconfig: $(RUN_STAMP)
	$(BIN)/oslo-config-generator --config-file etc/oslo-config-generator/sbusr.conf

clean:
	rm -rf $(VENV) $(LOCK) .pytest_cache .ruff_cache build *.egg-info
