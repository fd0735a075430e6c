#!/usr/bin/env bash
# Installs the third-party programs the tests and benchmarks drive, from Debian's packages:
# rclone, cadaver and davfs2 (real WebDAV clients), litmus (the WebDAV conformance suite),
# nginx with its WebDAV modules (the benchmark's peer), redis-server (the broker of bench/functions.py's Celery peer),
# bubblewrap (the functions' sandbox), python3-gfal2 and gfal2-plugin-http (gfal2 through the WLCG Tape REST API),
# gfal2-util-scripts (gfal-copy, for HTTP third-party copy), chromium and chromium-driver (the console's browser tests), davix (davix-put/get over TLS), jq and shunit2 (SURF's ada client and its integration suite, which this
# clones too: tests/interop/test_ada.py).
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
command -v jq >/dev/null || need+=(jq)
[ -e /usr/share/shunit2/shunit2 ] || need+=(shunit2)
# gfal2's Python bindings and its HTTP/WebDAV plugin for the system python3 (tests/interop/test_gfal2.py).
/usr/bin/python3 -c 'import gfal2' 2>/dev/null || need+=(python3-gfal2)
compgen -G '/usr/lib/x86_64-linux-gnu/gfal2-plugins/libgfal_plugin_http.so*' >/dev/null ||
  compgen -G '/usr/lib/*/gfal2-plugins/libgfal_plugin_http.so*' >/dev/null || need+=(gfal2-plugin-http)
# gfal-copy (gfal2's command-line tools) for the HTTP third-party-copy tests and benchmark (tests/test_tpc.py, bench/tpc.py).
command -v gfal-copy >/dev/null || need+=(gfal2-util-scripts)
# davix's command-line tools (davix-put/davix-get) for the davs:// tests (tests/interop/test_tls.py).
command -v davix-put >/dev/null || need+=(davix)
# Debian's headless Chromium and its WebDriver for the web console's browser tests (tests/test_console.py, Selenium).
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)

# SURF's ada (the last commit of the bash client) for tests/interop/test_ada.py, which is skipped without it.
ada_dir="${XDG_CACHE_HOME:-$HOME/.cache}/headrace/SpiderScripts"
ada_commit=c0cdc4bea85075c29aa506662e5cdfbf77023267
if [ ! -e "$ada_dir/ada/ada" ]; then
  { git clone -q https://github.com/sara-nl/SpiderScripts "$ada_dir" && git -C "$ada_dir" checkout -q "$ada_commit"; } ||
    echo "install-test-deps: could not clone sara-nl/SpiderScripts: tests/interop/test_ada.py will be skipped" >&2
fi
[ ${#need[@]} -eq 0 ] && exit 0

apt_install install-test-deps "${need[@]}"
# Debian starts nginx and redis-server as services on install; the benchmarks run their own instances.
for service in nginx redis-server; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$service" 2>/dev/null; then
    $sudo systemctl stop "$service" || true
  fi
done
