#!/usr/bin/env bash
# Build Dex (the bundle's OIDC provider) from its Go module at a pinned version and cache the
# binary by version, so the second run is instant. Dex's module has `replace` directives, so
# `go install module@version` refuses it: it is built from a scratch module instead.
# Usage: scripts/build-dex.sh [VERSION]   -> prints the cached binary's path on stdout.
# VERSION is a Go module version; the default, v0.0.0-20260303133905-11d2eeb52b42, is the
# v2.45.1 tag (see docs/login.md for why this release and not a later master commit).
set -euo pipefail
version="${1:-${DEX_VERSION:-v0.0.0-20260303133905-11d2eeb52b42}}"
export GOTOOLCHAIN="${GOTOOLCHAIN:-go1.27.3}"
# Built with cgo, as the official image is: Dex's SQLite storage (the bundle keeps Dex's state in
# SQLite on a volume) needs it. The "-cgo" cache name rebuilds an older cgo-less cache once.
cache="${TEMPORAL_BUNDLE_CACHE:-$HOME/.cache/temporal-bundle}/dex-$version-cgo"
if [[ -x "$cache/dex" ]]; then
  echo "$cache/dex"
  exit 0
fi
command -v go >/dev/null || { echo "error: go toolchain not found" >&2; exit 1; }
command -v gcc >/dev/null || { echo "error: gcc not found (apt-get install gcc libc6-dev)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "building github.com/dexidp/dex/cmd/dex@$version (once; cached at $cache)" >&2
(
  cd "$work"
  go mod init dex-build >/dev/null 2>&1
  go get -tool "github.com/dexidp/dex/cmd/dex@$version" >&2
  CGO_ENABLED=1 go build -trimpath -ldflags "-s -w" -o dex github.com/dexidp/dex/cmd/dex >&2
)
mkdir -p "$cache.tmp"
mv "$work/dex" "$cache.tmp/dex"
rm -rf "$cache" && mv "$cache.tmp" "$cache"
echo "$cache/dex"
