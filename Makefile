# Two set-up commands, both safe on a fresh clone:
#   make serve   create the venv, install, fetch the weights if missing, serve on :8000
#   make test    create the venv, install with the test extras and system packages, lint, run the tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config.yaml

.PHONY: serve test install install-test lint pytest test-unit test-rest system-deps checkov tiny-model clean bench bench-quick

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Stamps: re-install only when pyproject.toml or a pin file changes. torch and torchvision come from
# requirements-torch.txt, the server's other dependencies from requirements.lock at their exact versions, each
# checked against its hash: the same two files the Dockerfile installs, so the tests run the image's versions.
$(VENV)/.installed: $(BIN)/python pyproject.toml requirements.lock requirements-torch.txt
	$(BIN)/pip install -q -r requirements-torch.txt
	$(BIN)/pip install -q --require-hashes -r requirements.lock
	$(BIN)/pip install -q --no-deps -e '.[fast]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[fast,test]'
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[fast,bench]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

serve: install
	$(BIN)/captioner serve --config $(CONFIG)

# System packages the integration tests drive for real; installed only when missing (CI runs as root).
# An entry is a command that is also its package's name, or COMMAND=PACKAGE where they differ.
# chromium: the web page tests; java: METEOR and the PTB tokenizer in `captioner eval`;
# promtool (Debian's prometheus package): checks and unit-tests deploy/prometheus/alerts.yaml;
# redis-server: the shared cache and job store tests; nginx: deploy/nginx.conf checks and the failover test;
# openssl: the test certificate of the HTTPS/SNI pinning test (a skipped test fails the suite: docs/testing.md).
SYSTEM_PACKAGES := chromium java=default-jre-headless promtool=prometheus redis-server nginx openssl
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do command -v $${p%%=*} >/dev/null 2>&1 || missing="$$missing $${p#*=}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# checkov (tests/system/test_deploy_scan.py scans deploy/ and the Dockerfile) in a venv of its own: its pins would
# downgrade packages of requirements.lock (cachetools, packaging, networkx) in the server's venv.
CHECKOV_VENV ?= .venv-checkov
$(CHECKOV_VENV)/.installed:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q checkov==3.3.30
	touch $@

checkov: $(CHECKOV_VENV)/.installed

lint: install-test
	$(BIN)/ruff check captioner tests bench
	$(BIN)/ruff format --check captioner
	$(BIN)/mypy captioner

# The tiers (docs/testing.md). The unit tier first, on its own: a fast gate (no process, socket or model), so a
# broken build stops in seconds. Then integration and system together on pytest-xdist's workers: one file per
# worker at a time (a module's server starts once), the long files first (tests/conftest.py, LONG_FIRST).
# PYTEST_WORKERS: 3 on 2 cores, where the system tests spend much of their time waiting on processes.
PYTEST_WORKERS ?= 3
PYTEST_ARGS ?=
test-unit: install-test
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests/unit

test-rest: install-test system-deps checkov
	CHECKOV=$(CURDIR)/$(CHECKOV_VENV)/bin/checkov $(BIN)/python -m pytest -q $(PYTEST_ARGS) -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder \
	  tests/system tests/integration

pytest: test-unit test-rest

# What can overlap does: the three installs (independent venvs and apt), then lint beside the unit tier.
test:
	$(MAKE) -j3 --output-sync=target install-test system-deps checkov
	$(MAKE) -j2 --output-sync=target lint test-unit
	$(MAKE) test-rest

tiny-model: install
	$(BIN)/captioner init-model --size tiny --out weights/tiny

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .pytest_cache .mypy_cache .ruff_cache

# Benchmarks (docs/benchmarks.md): not part of `make test`. Full ~18 min on 2 cores; quick ~2.5 min.
bench: $(VENV)/.installed-bench
	PYTHON=$(BIN)/python bench/run_all

bench-quick: $(VENV)/.installed-bench
	PYTHON=$(BIN)/python bench/run_all --quick
