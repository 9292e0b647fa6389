# Shared by bench/dns.sh, bench/edge.sh and bench/stream.sh (sourced, not run): installs the
# Debian packages a benchmark drives and the project's venv. Debian starts a freshly installed
# nsd, nginx or haproxy on port 53 or 80 of every address (haproxy: its packaged config);
# the harness only ever uses its own loopback instances, so the packages' services are kept
# from starting (a temporary policy-rc.d, as in Debian's docker
# images) and, under systemd, disabled again after the install.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

# ensure_packages PKG[:SERVICE] ...  installs the missing ones quietly
ensure_packages() {
  local missing=() services=() spec pkg svc
  for spec in "$@"; do
    pkg=${spec%%:*}; svc=${spec#*:}
    if dpkg -s "$pkg" >/dev/null 2>&1; then continue; fi
    missing+=("$pkg")
    if [[ $svc != "$spec" ]]; then services+=("$svc"); fi
  done
  if [[ ${#missing[@]} -eq 0 ]]; then return 0; fi
  echo "bench: installing Debian packages: ${missing[*]}" >&2
  local guard=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    guard=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$guard" >/dev/null
    $SUDO chmod 755 "$guard"
  fi
  local rc=0
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null || {
    $SUDO apt-get update -q >/dev/null &&
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  } || rc=$?
  if [[ -n $guard ]]; then $SUDO rm -f "$guard"; fi
  if [[ $rc -ne 0 ]]; then
    echo "bench: apt-get install ${missing[*]} failed" >&2
    return "$rc"
  fi
  if [[ -d /run/systemd/system && ${#services[@]} -gt 0 ]]; then
    $SUDO systemctl disable --now "${services[@]}" >/dev/null 2>&1 || true
  fi
}

# ensure_venv: a .venv that imports what the harnesses use (dnspython is a test extra);
# otherwise build it through the Makefile's own target
ensure_venv() {
  (cd "$REPO" && .venv/bin/python -c 'import dns.message, maxminddb, aiohttp, gslb, edge') \
    2>/dev/null && return 0
  make -C "$REPO" --no-print-directory .venv/bin/.installed-test >&2
}
