#!/usr/bin/env bash
# DNS benchmark: gslb against NSD on the same zone, each pinned to core 0 with dnsperf on
# core 1, alternating within one run. Installs nsd and dnsperf when missing, then runs
# bench/dnsbench.py, which starts and stops every server itself (all on 127.0.0.1, free ports).
#   bench/dns.sh                         # all scenarios, 10 s x 2 rounds per server
#   bench/dns.sh --duration 3 --rounds 1 --scenarios static,ecs10k
#   bench/dns.sh --help                  # every option
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_packages nsd:nsd dnsperf
ensure_venv
cd "$REPO"
exec .venv/bin/python bench/dnsbench.py "$@"
