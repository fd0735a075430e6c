#!/usr/bin/env bash
# Makes sure PostgreSQL's server programs (initdb, postgres) are on this machine, from Debian's `postgresql`
# package, and prints their directory (/usr/lib/postgresql/<newest version>/bin). Idempotent: installs
# nothing when a version is there. Downloaded .deb files are cached under ~/.cache/headrace/apt.
# The tests (tests/support/pg_harness.py) run their own throwaway cluster with these programs; the cluster that
# Debian's package creates and may start as a service is stopped, and its service disabled.
set -euo pipefail
# shellcheck source=scripts/apt.sh
source "$(dirname "$0")/apt.sh"

newest_bin() {
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/postgres" ] && echo "$d"
}

if bin="$(newest_bin)"; then
  echo "$bin"
  exit 0
fi

apt_install install-postgres postgresql

# Debian creates a "main" cluster and starts it as a service (where services start at all): the tests
# never use it, so stop it and keep it from starting at boot.
if command -v pg_lsclusters >/dev/null; then
  pg_lsclusters --no-header 2>/dev/null | while read -r version name _port status _rest; do
    if [ "$status" = "online" ]; then
      $sudo pg_ctlcluster "$version" "$name" stop || true
    fi
  done
fi
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  $sudo systemctl stop postgresql >/dev/null 2>&1 || true
  $sudo systemctl disable postgresql >/dev/null 2>&1 || true
fi

bin="$(newest_bin)" || { echo "install-postgres: no initdb/postgres under /usr/lib/postgresql after install" >&2; exit 1; }
echo "$bin"
