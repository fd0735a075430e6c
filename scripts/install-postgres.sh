#!/usr/bin/env bash
# Makes sure PostgreSQL's server programs (initdb, postgres) are on this machine, from Debian's `postgresql`
# package, and prints their directory (/usr/lib/postgresql/<newest version>/bin). Idempotent: installs
# nothing when a version is there. Downloaded .deb files are cached under ~/.cache/headrace/apt.
# The tests (tests/pg_harness.py) run their own throwaway cluster with these programs; the cluster that
# Debian's package creates and may start as a service is stopped, and its service disabled.
set -euo pipefail

newest_bin() {
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/postgres" ] && echo "$d"
}

if bin="$(newest_bin)"; then
  echo "$bin"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-postgres: need root or sudo to install postgresql" >&2; exit 1; }
  sudo="sudo"
fi
cache="${XDG_CACHE_HOME:-$HOME/.cache}/headrace/apt"
mkdir -p "$cache/partial"
apt_opts=(-y -q -o "Dir::Cache::archives=$cache" -o APT::Sandbox::User=root)
export DEBIAN_FRONTEND=noninteractive
echo "install-postgres: installing postgresql" >&2
if ! $sudo apt-get install "${apt_opts[@]}" postgresql >/dev/null; then
  $sudo apt-get update -q >/dev/null
  $sudo apt-get install "${apt_opts[@]}" postgresql >/dev/null
fi

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
