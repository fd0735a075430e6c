#!/usr/bin/env bash
# Rebuilds the web console's one vendored library from npm, reproducibly: qrcode-generator (MIT, Kazuhiko
# Arase), the ES module build as published, checked against the tarball's pinned SHA-256. Needs npm only
# when run; `make run` serves the committed file (src/headrace/console/static/vendor/qrcode.mjs).
set -euo pipefail
version=2.0.4
sha256=02e2e18a99a90b02dad940851f59b7c3c5fd1ab79cbdece8595cb06328878159
out="$(cd "$(dirname "$0")/.." && pwd)/src/headrace/console/static/vendor"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "qrcode-generator@$version" >/dev/null)
echo "$sha256  $work/qrcode-generator-$version.tgz" | sha256sum -c --quiet
tar -xzf "$work/qrcode-generator-$version.tgz" -C "$work"
cp "$work/package/dist/qrcode.mjs" "$out/qrcode.mjs"
echo "qrcode-generator $version (npm), dist/qrcode.mjs" >"$out/qrcode.VERSION"
echo "vendor-console: $out/qrcode.mjs from qrcode-generator@$version"
