# localrank: `make demo` and `make test` are the two commands. Every target is idempotent:
# it creates .venv, builds the package in release mode when its sources changed, then runs.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.localrank-built

# pyo3's build script must find the venv's interpreter, also for `cargo clippy`.
export PYO3_PYTHON := $(abspath $(PY))
# Tests and benches see the venv first.
export PATH := $(abspath $(BIN)):$(PATH)

RUST_SOURCES := Cargo.toml Cargo.lock $(shell find rust -name '*.rs' -o -name Cargo.toml 2>/dev/null)

.PHONY: all demo test eval bench build venv test-rust test-python lint clean models postgres postgres-stop

all: build

# Every Python package comes from uv.lock (README: "Locked dependencies"). uv itself is pinned
# here and in pyproject.toml's [tool.uv]; `make lock` refreshes the lock.
UV_VERSION  := 0.13.9
# pip too: maturin installs the package with it, and the MovieLens fetch runs `pip download`.
PIP_VERSION := 26.3
LOCKED     := $(VENV)/.localrank-locked
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))

# The stamp names both versions, so changing either re-installs them in an existing .venv.
TOOLS := $(VENV)/.tools-uv-$(UV_VERSION)-pip-$(PIP_VERSION)

$(TOOLS):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "pip==$(PIP_VERSION)" "uv==$(UV_VERSION)"
	@touch $@

# The dev extra (which holds every other extra) at the locked versions, maturin among them,
# without the project.
$(LOCKED): $(TOOLS) uv.lock
	$(BIN)/uv sync --frozen --inexact --no-install-project --extra dev --quiet
	@touch $@

venv: $(LOCKED)

# Build the extension in release mode and install the package (editable). Its dependencies are
# already installed from the lock, so maturin adds nothing; tests/test_lock.py checks that.
$(STAMP): $(LOCKED) pyproject.toml $(RUST_SOURCES)
	$(BIN)/maturin develop --release --quiet
	@touch $@

# Re-resolve uv.lock from pyproject.toml's ranges (the newest versions that satisfy them).
.PHONY: lock
lock: $(TOOLS)
	$(BIN)/uv lock --upgrade

build: $(STAMP)

demo: build
	$(PY) -m tools.demo

test: build test-rust test-python lint

# Regenerate models/ deterministically (two runs give byte-identical files): the demo taxonomy,
# catalog and signed bundle, then the ONNX scorer exported from that bundle (f32 and int8).
models: build
	$(PY) -m tools.models --dir models
	$(BIN)/localrank export-onnx --bundle models/demo.bundle --public-key models/demo-key.pub.pem \
		-o models/localrank-scorer.onnx
	$(BIN)/localrank export-onnx --bundle models/demo.bundle --public-key models/demo-key.pub.pem \
		-o models/localrank-scorer-int8.onnx --int8

test-rust:
	cargo test -p localrank-core --release -- --nocapture

# PostgreSQL is up before pytest, and pytest finds it through LOCALRANK_TEST_PG_URL (docs/testing.md).
test-python: build postgres
	LOCALRANK_TEST_PG_URL="$${LOCALRANK_TEST_PG_URL:-$$(cat $(PG_DIR)/url)}" $(PY) -m pytest -q

lint: build
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(BIN)/ruff check python tests benches tools
	$(BIN)/lint-imports
	$(PY) -m mypy
	$(PY) -m mypy.stubtest localrank._core

bench: build
	$(PY) -m pytest benches -q --benchmark-only --benchmark-columns=median,iqr,ops
	$(PY) -m benches.compare
	$(PY) -m benches.recommend
	$(PY) -m benches.onnx_model
	$(MAKE) bench-server

# The server's bounded load tests on loopback (benches/server_load.py, docs/scale-out.md):
# 20 s each, SQLite with one worker and PostgreSQL with two, then both again with a SIGKILL of
# the server halfway. Each fails unless every acknowledged report is stored, and only those.
SERVER_LOAD_S ?= 20
.PHONY: bench-server
bench-server: build postgres
	LOCALRANK_TEST_PG_URL="$${LOCALRANK_TEST_PG_URL:-$$(cat $(PG_DIR)/url)}" sh -c '\
	$(PY) benches/server_load.py --db sqlite --seconds $(SERVER_LOAD_S) --json benches/results/server-sqlite.json && \
	$(PY) benches/server_load.py --db postgresql --workers 2 --seconds $(SERVER_LOAD_S) --json benches/results/server-pg2.json && \
	$(PY) benches/server_load.py --db sqlite --seconds $(SERVER_LOAD_S) --kill --json benches/results/server-sqlite-kill.json && \
	$(PY) benches/server_load.py --db postgresql --workers 2 --seconds $(SERVER_LOAD_S) --kill --json benches/results/server-pg2-kill.json'

clean:
	rm -rf $(VENV) target python/localrank/*.so

# A throwaway PostgreSQL for the tests (scripts/postgres.sh, docs/testing.md): installs Debian's
# package when missing, creates a cluster in .pg/ on first use, starts it on 127.0.0.1:$(PG_PORT)
# (the next free port when that one is taken) and writes its URL to .pg/url. About 0.1 s when it
# is already running. With LOCALRANK_TEST_PG_URL set, that server is used and nothing is started.
PG_DIR  := .pg
PG_PORT ?= 55432

postgres:
	@if [ -n "$$LOCALRANK_TEST_PG_URL" ]; then \
		echo "postgres: using LOCALRANK_TEST_PG_URL from the environment; nothing started"; \
	else \
		scripts/postgres.sh install && \
		url="$$(scripts/postgres.sh start $(PG_DIR) $(PG_PORT))" && \
		echo "postgres: $$url"; \
	fi

postgres-stop:
	scripts/postgres.sh stop $(PG_DIR)

# aarch64, from an x86-64 Debian machine (docs/arm.md). The scripts install Debian's cross
# toolchain and qemu when missing (scripts/arm64-toolchain.sh) and build into target-aarch64/.
.PHONY: arm64-toolchain test-arm64 build-arm64 wheel-arm64 smoke-arm64

arm64-toolchain:
	scripts/arm64-toolchain.sh

# Cross-compile the core and run its tests under qemu, on a CPU with dotprod and one without,
# so that the scalar, neon and sdot paths all run against the scalar reference.
test-arm64:
	scripts/arm64-test.sh

# Cross-compile the core's tests for aarch64 (warnings are errors) without running them.
build-arm64:
	scripts/arm64-test.sh --build-only

# The aarch64 abi3 wheel, in target-aarch64/wheels/.
wheel-arm64: venv
	scripts/arm64-wheel.sh --build-only

# The wheel, imported and checked against numpy by an emulated aarch64 Python.
smoke-arm64: venv
	scripts/arm64-wheel.sh

# The long statistical runs (chained-report estimator statistics) that `make test` skips to keep
# its false-failure rate below 1e-3. Prints the measured variance ratios and pooled z.
.PHONY: stats
stats: build
	$(PY) -m pytest -q -s -m 'slow or stats' tests/test_estimators.py tests/test_ldp.py

# The MovieLens-100K evaluation (docs/evaluation.md): the default grid, ~13 min on 2 cores.
# `make eval-quick` runs the small grid (~45 s). make test runs a 40-user version.
.PHONY: eval eval-quick eval-scale
eval: build
	$(PY) -m tools.evaluation --out eval-results

eval-quick: build
	$(PY) -m tools.evaluation --quick --out eval-results-quick

# A SIMULATION, not part of `make eval`: synthetic fleets of 1k, 10k and 100k devices drawn from
# a model fitted to MovieLens (docs/evaluation.md, "Fleet-size simulation").
eval-scale: build
	$(PY) -m tools.evaluation.scale --out eval-results-scale
