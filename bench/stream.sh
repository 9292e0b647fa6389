#!/usr/bin/env bash
# Stream benchmark: our [[stream]] TCP pass-through against HAProxy mode tcp in front of the
# same origin, pinned to core 0 with the origin and load generator on core 1, alternating
# within one run: throughput of a large download and connections per second. Installs
# haproxy when missing, then runs bench/stream.py, which starts and stops every process.
#   bench/stream.sh                                 # 1 GiB downloads, 10 s of cps, 2 rounds
#   bench/stream.sh --size 256 --duration 3 --rounds 1
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_packages haproxy:haproxy
ensure_venv
cd "$REPO"
exec .venv/bin/python bench/stream.py "$@"
