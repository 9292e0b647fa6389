#!/usr/bin/env bash
# Misses, two builds of the edge taking turns: the working tree against a commit, edge CPU
# time per miss (bench/missab.py; its --help says more). Installs nginx and wrk when missing.
#   bench/missab.sh 5440423
#   bench/missab.sh HEAD~3 --connections 1 --rounds 4
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_packages nginx:nginx wrk valgrind
ensure_venv
cd "$REPO"
exec .venv/bin/python bench/missab.py "$@"
