#!/usr/bin/env bash
# Installs the third-party programs the tests and benchmarks drive, from Debian's packages:
# rclone, cadaver and davfs2 (real WebDAV clients), litmus (the WebDAV conformance suite),
# nginx with its WebDAV modules (the benchmark's peer), redis-server (the broker of bench/functions.py's Celery peer).
# Downloaded .deb files are cached under ~/.cache/headrace/apt so that a fresh clone reuses them.
set -euo pipefail

need=()
command -v rclone >/dev/null || need+=(rclone)
command -v cadaver >/dev/null || need+=(cadaver)
command -v litmus >/dev/null || need+=(litmus)
command -v mount.davfs >/dev/null || need+=(davfs2)
command -v nginx >/dev/null || need+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_http_dav_ext_module.so ] || need+=(libnginx-mod-http-dav-ext)
command -v redis-server >/dev/null || need+=(redis-server)
[ ${#need[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-test-deps: need root or sudo to install: ${need[*]}" >&2; exit 1; }
  sudo="sudo"
fi
cache="${XDG_CACHE_HOME:-$HOME/.cache}/headrace/apt"
mkdir -p "$cache/partial"
apt_opts=(-y -q -o "Dir::Cache::archives=$cache" -o APT::Sandbox::User=root)
export DEBIAN_FRONTEND=noninteractive
echo "install-test-deps: installing ${need[*]}"
if ! $sudo apt-get install "${apt_opts[@]}" "${need[@]}" >/dev/null; then
  $sudo apt-get update -q >/dev/null
  $sudo apt-get install "${apt_opts[@]}" "${need[@]}" >/dev/null
fi
# Debian starts nginx and redis-server as services on install; the benchmarks run their own instances.
for service in nginx redis-server; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$service" 2>/dev/null; then
    $sudo systemctl stop "$service" || true
  fi
done
