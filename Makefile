# Every target does its own set-up on a fresh machine: virtualenv, install, Cython build.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: build run test test-twin lint bench bench-rewrite docs clean peers tools

$(STAMP): setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel cython
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

build: $(STAMP)
	$(BIN)/python setup.py --quiet build_ext --inplace

DEV_KEY := $(VENV)/dev-hash.key

$(DEV_KEY): $(STAMP)
	$(BIN)/python -c "import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600); os.write(fd, os.urandom(32))" $@

## run: the sidecar with the bundled policies (embedded Rego), printing what it forwards (no upstream
## needed); the PCI policy's keyed hash uses a development key made once in .venv. With CONFIG=file,
## the file decides (and the environment over it): these defaults, environment variables, would
## override its own policy directory and hash key.
run: build $(DEV_KEY)
ifeq ($(CONFIG),)
	SIDECAR_POLICY_DIR=$${SIDECAR_POLICY_DIR:-policies} \
	SIDECAR_POLICY_HASH_KEY_FILE=$${SIDECAR_POLICY_HASH_KEY_FILE:-$(DEV_KEY)} \
	$(BIN)/otlp-sidecar run
else
	$(BIN)/otlp-sidecar run --config $(CONFIG)
endif

## test: the whole suite on the Cython extensions (tests/rewrite crosses them with the twins), then
## test-twin (with PYTEST_ARGS, the same selection on the twins)
test: build
	OTLP_SIDECAR_REQUIRE_EXTENSIONS=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-twin $(if $(PYTEST_ARGS),TWIN_TESTS=)

## test-twin: the whole suite again on the pure-Python twins (OTLP_SIDECAR_NO_EXTENSIONS=1, inherited
## by every sidecar process the tests spawn), as a user without a compiler runs the package; the run
## fails at once if the C rewriter is loaded (tests/conftest.py) and tests/app/test_rewriter_in_use.py
## checks a spawned sidecar. All of it, not a subset: it takes about as long as the extension pass
## (10 min measured on 2 shared cores), inside CI's budget, and a subset of the directories that go
## through the rewriter, pipeline, policies and TLS would have saved only about a quarter.
TWIN_TESTS ?= tests
test-twin: $(STAMP)
	OTLP_SIDECAR_NO_EXTENSIONS=1 $(BIN)/python -m pytest -q $(TWIN_TESTS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check sidecar tests bench setup.py

## bench: the end-to-end load benchmark (about 10 minutes): a table on stdout, figures in bench/results/
bench: build
	$(BIN)/python -m bench.load $(BENCH_ARGS)

## bench-rewrite: the rewriter alone against its twin and the naive baseline
bench-rewrite: build
	$(BIN)/python -m bench.rewrite

## peers: OPA, an OpenTelemetry Collector, telemetrygen and h2spec built from their pinned Go modules
## (tests/peers/) into ~/.cache/otlp-sidecar/peers/bin (or $OTLP_SIDECAR_PEERS_DIR/bin), once per version (needs Go 1.26)
peers:
	bash tests/peers/build.sh

## tools: promtool for the alert-rule tests (tests/operability), from Debian's prometheus package when
## it is missing (apt-get: root, as in CI)
tools:
	@command -v promtool >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@promtool --version | head -n 1

docs: $(STAMP)
	$(BIN)/otlp-sidecar config docs > docs/configuration.md
	$(BIN)/python -m sidecar.metrics_docs > docs/metrics.md
	$(BIN)/python -m sidecar.policy.config_docs docs/policy.md

clean:
	rm -rf build $(VENV) sidecar/_ext/*.so sidecar/_ext/*.c ext/*.c
