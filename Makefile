# safedeploy.compose: the two commands the README promises, and their parts.
#   make demo   roll a demo stack out, break it, watch it roll back (local engine + registry)
#   make test   sanity, lint, Galaxy's import check, unit, integration (Compose v2), the Compose v1 leg,
#               molecule, bench smoke: everything CI runs
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.build/collections
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(BIN):$(PATH)
PYTEST_ARGS ?=

.PHONY: test demo venv collection testbed testbed-down sanity lint galaxy unit integration test-compose-v1 molecule bench bench-smoke clean

test: venv collection testbed
	@tests/run-suite

demo: venv collection testbed
	@$(BIN)/python demo/demo.py

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

collection:
	@mkdir -p .build/collections/ansible_collections/safedeploy
	@test -L .build/collections/ansible_collections/safedeploy/compose || ln -s ../../../.. .build/collections/ansible_collections/safedeploy/compose

testbed: venv
	$(BIN)/python tests/testbed/testbed.py up > /dev/null

testbed-down: venv
	$(BIN)/python tests/testbed/testbed.py down

sanity: venv
	tests/sanity/sanity.sh

lint: venv collection
	$(BIN)/ansible-lint

galaxy: venv
	tests/galaxy/check.sh

unit: venv collection
	tests/pytest-honest tests/unit $(PYTEST_ARGS)

# Two pytest processes at once, each running whole test files (tests/run_integration.py): about half the wall time.
integration: venv collection testbed
	$(BIN)/python tests/run_integration.py --durations=15 $(PYTEST_ARGS)

# the compatibility leg: the tests whose outcome depends on the Compose CLI (marker compose_cli), on docker-compose v1
test-compose-v1: venv collection testbed
	SAFEDEPLOY_TEST_COMPOSE=v1 tests/pytest-honest tests/integration -m compose_cli --durations=5 $(PYTEST_ARGS)

molecule: venv collection testbed
	tests/run-molecule

# --mitogen: figure 1 and the fleet figure also with the opt-in mitogen strategy (pip installs it into
# .build/bench-mitogen for the bench only; nothing else needs it)
bench: venv collection testbed
	$(BIN)/python bench/run.py --mitogen

bench-smoke: venv collection testbed
	$(BIN)/python bench/run.py --smoke

clean:
	rm -rf .build tests/output .pytest_cache
