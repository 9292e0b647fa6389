# Shared by bench/dns.sh and bench/edge.sh (sourced, not run): installs the Debian packages a
# benchmark drives and the project's venv. Debian starts a freshly installed nsd or nginx on
# port 53 or 80 of every address; the harness only ever uses its own loopback instances, so the
# packages' services are kept from starting (a temporary policy-rc.d, as in Debian's docker
# images) and, under systemd, disabled again after the install.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

# ensure_packages PKG[:SERVICE] ...  installs the missing ones quietly
ensure_packages() {
  local missing=() services=() spec pkg svc
  for spec in "$@"; do
    pkg=${spec%%:*}; svc=${spec#*:}
    dpkg -s "$pkg" >/dev/null 2>&1 && continue
    missing+=("$pkg"); [[ $svc != "$spec" ]] && services+=("$svc")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
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
  [[ -n $guard ]] && $SUDO rm -f "$guard"
  [[ $rc -eq 0 ]] || { echo "bench: apt-get install ${missing[*]} failed" >&2; return "$rc"; }
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
