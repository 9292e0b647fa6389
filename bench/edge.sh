#!/usr/bin/env bash
# Edge benchmark: our caching proxy against nginx proxy_cache in front of the same origin,
# each pinned to core 0 with wrk on core 1, alternating within one run, cache hits only; then
# our edge with 2 workers vs 1, unpinned. Installs nginx and wrk when missing, then runs
# bench/edgebench.py, which starts and stops every process itself (127.0.0.1, free ports).
#   bench/edge.sh                        # all scenarios, 10 s x 2 rounds per proxy
#   bench/edge.sh --duration 3 --rounds 1 --scenarios 1k
#   bench/edge.sh --help                 # every option
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_packages nginx:nginx wrk openssl
ensure_venv
cd "$REPO"
exec .venv/bin/python bench/edgebench.py "$@"
