#!/usr/bin/env bash
# Installs the third-party programs the tests and benchmarks drive, from Debian's packages:
# rclone, cadaver and davfs2 (real WebDAV clients), litmus (the WebDAV conformance suite),
# nginx with its WebDAV modules (the benchmark's peer), redis-server (the broker of bench/functions.py's Celery peer),
# bubblewrap (the functions' sandbox).
# Downloaded .deb files are cached under ~/.cache/headrace/apt so that a fresh clone reuses them.
set -euo pipefail
# shellcheck source=scripts/apt.sh
source "$(dirname "$0")/apt.sh"

need=()
command -v rclone >/dev/null || need+=(rclone)
command -v cadaver >/dev/null || need+=(cadaver)
command -v litmus >/dev/null || need+=(litmus)
command -v mount.davfs >/dev/null || need+=(davfs2)
command -v nginx >/dev/null || need+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_http_dav_ext_module.so ] || need+=(libnginx-mod-http-dav-ext)
command -v redis-server >/dev/null || need+=(redis-server)
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v bwrap >/dev/null || need+=(bubblewrap)
[ ${#need[@]} -eq 0 ] && exit 0

apt_install install-test-deps "${need[@]}"
# Debian starts nginx and redis-server as services on install; the benchmarks run their own instances.
for service in nginx redis-server; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$service" 2>/dev/null; then
    $sudo systemctl stop "$service" || true
  fi
done
