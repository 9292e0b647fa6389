# GeoEdge developer entry points. Two commands matter: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the test suite drives as real clients / peers (chromium and its driver:
# the gslb status page test, tests/integration/test_gslb_status_page.py; prometheus for
# promtool: the monitoring kit's test, tests/integration/test_monitoring.py).
APT_TEST_PACKAGES := bind9-dnsutils curl openssl chromium chromium-driver prometheus
# checkov (tests/unit/test_terraform.py::test_checkov_passes) lives in a virtualenv of its
# own: it pins packaging<24, which pytest 9 refuses, and its bc-python-hcl2 dependency
# installs an `hcl2` module over python-hcl2's. About 90 s to install, 20 s to run.
CHECKOV_VENV := .venv-checkov
CHECKOV_VERSION := 3.3.30

# `make run` starts the whole system on loopback (gslb/topology.toml); TOPOLOGY=FILE runs
# another layout (docs/configuration.md, "Topology files").
TOPOLOGY ?=

.PHONY: run test lint typecheck unit integration apt-test checkov clean

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

# Debian starts a freshly installed prometheus (and its node exporter) as services; the tests
# only run promtool, so services are kept from starting during the install (a temporary
# policy-rc.d, as bench/lib.sh does for nsd and nginx).
apt-test:
	@missing=""; for p in $(APT_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  guard=""; if [ ! -e /usr/sbin/policy-rc.d ]; then guard=/usr/sbin/policy-rc.d; \
	    printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee $$guard >/dev/null; $(SUDO) chmod 755 $$guard; fi; \
	  rc=0; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; } || rc=$$?; \
	  if [ -n "$$guard" ]; then $(SUDO) rm -f $$guard; fi; \
	  exit $$rc; \
	fi

lint: $(BIN)/.installed-test
	$(BIN)/ruff check gslb edge geo geoedge tests bench
	$(BIN)/ruff format --check gslb edge geo geoedge tests bench

typecheck: $(BIN)/.installed-test
	$(BIN)/mypy --strict gslb edge geo geoedge bench

$(CHECKOV_VENV)/.installed:
	$(PY) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q 'checkov==$(CHECKOV_VERSION)'
	touch $@

checkov: $(CHECKOV_VENV)/.installed
	CHECKOV=$(CURDIR)/$(CHECKOV_VENV)/bin/checkov $(BIN)/pytest -q tests/unit/test_terraform.py -k checkov

test: $(BIN)/.installed-test $(CHECKOV_VENV)/.installed apt-test lint typecheck
	CHECKOV=$(CURDIR)/$(CHECKOV_VENV)/bin/checkov $(BIN)/pytest -q

unit: $(BIN)/.installed-test
	$(BIN)/pytest -q tests/unit

integration: $(BIN)/.installed-test apt-test
	$(BIN)/pytest -q tests/integration

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .pytest_cache .mypy_cache .ruff_cache .run

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
