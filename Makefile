# Two commands on a fresh Debian 12 machine (run as root):
#   make demo   - install everything, start demo backends and the proxy on examples/demo.json
#   make test   - install everything, then lint, type-check and run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: setup system venv build demo test lint bench wheel clean

setup: system venv build

# apt packages (bcc, kernel headers and their /lib/modules links, bpffs): idempotent
system:
	bash scripts/install-system-deps.sh

# Our own interpreter in a venv; bcc is Debian's, so link just that one package in.
venv:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q 'setuptools>=77' wheel 'Cython>=3.0,<3.4'
	$(PIP) install -q --no-build-isolation -e '.[dev]'
	bash scripts/link-bcc.sh $(PY)

# Rebuild the Cython relay in place (editable install)
build:
	$(PY) setup.py -q build_ext --inplace

demo: setup
	$(VENV)/bin/fastproxy demo examples/demo.json

lint:
	$(VENV)/bin/ruff check src tests $(wildcard benchmarks)
	$(VENV)/bin/ruff format --check src tests $(wildcard benchmarks)
	$(VENV)/bin/mypy

test: setup lint
	$(VENV)/bin/pytest -q tests

# In a network namespace of its own: nothing else on the machine (other test runs, services)
# shares its loopback ports or its bpf steering state, and the net sysctls are the defaults.
bench: setup
	bash scripts/install-bench-deps.sh
	unshare --net -- sh -c 'ip link set lo up && exec "$$0" -q benchmarks --benchmark-disable-gc' \
		$(VENV)/bin/pytest

wheel: setup
	$(PIP) wheel --no-deps -w dist .

clean:
	rm -rf build dist src/fastproxy/_relay.c src/fastproxy/*.so
