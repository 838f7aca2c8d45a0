#!/usr/bin/env bash
# Build temporal-server and temporal-sql-tool from the Go module at a pinned release and cache
# them by version, so the second run is instant. No container registry is needed.
# Usage: scripts/build-temporal.sh [VERSION]   -> prints the bin directory on stdout.
# VERSION defaults to 1.32.2; the previous line stays buildable (e.g. 1.31.5) for upgrade tests.
set -euo pipefail
version="${1:-${TEMPORAL_VERSION:-1.32.2}}"
# 1.31.5+ and 1.32.x declare `go 1.26.10`: the go command fetches this toolchain through the
# module proxy when the machine's Go is older. Override with GOTOOLCHAIN=local|goX.Y.Z.
export GOTOOLCHAIN="${GOTOOLCHAIN:-go1.27.3}"
# TEMPORAL_BUNDLE_CACHE, like the other build scripts (TEMPORAL_BIN_CACHE: its older name).
cache="${TEMPORAL_BUNDLE_CACHE:-${TEMPORAL_BIN_CACHE:-$HOME/.cache/temporal-bundle}}/temporal-$version"
if [[ -x "$cache/temporal-server" && -x "$cache/temporal-sql-tool" ]]; then
  echo "$cache"
  exit 0
fi
command -v go >/dev/null || { echo "error: go toolchain not found" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export GOBIN="$work/bin" CGO_ENABLED=0 GOFLAGS="-trimpath"
for pkg in server tools/sql; do
  echo "building go.temporal.io/server/cmd/$pkg@v$version" >&2
  go install -tags disable_grpc_modules -ldflags "-s -w" "go.temporal.io/server/cmd/$pkg@v$version" >&2
done
mkdir -p "$cache.tmp"
mv "$GOBIN/server" "$cache.tmp/temporal-server"
mv "$GOBIN/sql" "$cache.tmp/temporal-sql-tool"
rm -rf "$cache" && mv "$cache.tmp" "$cache"
echo "$cache"
