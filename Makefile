# GeoEdge developer entry points. Two commands matter: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the test suite drives as real clients / peers (chromium and its driver:
# the gslb status page test, tests/integration/test_gslb_status_page.py).
APT_TEST_PACKAGES := bind9-dnsutils curl openssl chromium chromium-driver

# `make run` starts the whole system on loopback (gslb/topology.toml); TOPOLOGY=FILE runs
# another layout (docs/configuration.md, "Topology files").
TOPOLOGY ?=

.PHONY: run test lint typecheck unit integration apt-test clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(BIN)/.installed-test: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/.installed $@

run: $(BIN)/.installed
	$(BIN)/gslb run $(if $(TOPOLOGY),--topology $(TOPOLOGY))

apt-test:
	@missing=""; for p in $(APT_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; }; \
	fi

lint: $(BIN)/.installed-test
	$(BIN)/ruff check gslb edge geo geoedge tests bench
	$(BIN)/ruff format --check gslb edge geo geoedge tests bench

typecheck: $(BIN)/.installed-test
	$(BIN)/mypy --strict gslb edge geo geoedge bench

test: $(BIN)/.installed-test apt-test lint typecheck
	$(BIN)/pytest -q

unit: $(BIN)/.installed-test
	$(BIN)/pytest -q tests/unit

integration: $(BIN)/.installed-test apt-test
	$(BIN)/pytest -q tests/integration

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .run

# Benchmarks (docs/benchmarks.md), not part of `make test`: each installs its peer and load
# generator from Debian (nsd + dnsperf, nginx + wrk, haproxy) and takes a few minutes on an otherwise
# idle 2-core machine. Options go through BENCH_ARGS, e.g.
#   make bench-dns BENCH_ARGS="--duration 3 --rounds 1 --scenarios static"
BENCH_ARGS ?=
.PHONY: bench-dns bench-edge bench-stream

bench-dns: $(BIN)/.installed-test
	bash bench/dns.sh $(BENCH_ARGS)

bench-edge: $(BIN)/.installed-test
	bash bench/edge.sh $(BENCH_ARGS)

bench-stream: $(BIN)/.installed-test
	bash bench/stream.sh $(BENCH_ARGS)
