#!/usr/bin/env bash
# Build grpc-health-probe (github.com/grpc-ecosystem/grpc-health-probe), the gRPC ecosystem's
# health check client, from its Go module at a released tag, and cache the binary by version so
# the second run is instant. Static (CGO_ENABLED=0): it runs in the Debian bundle image and, copied
# into the bundle-tools volume, in the official Alpine server image too.
# Usage: scripts/build-health-probe.sh [VERSION]   -> prints the cached binary's path on stdout.
# Env: GRPC_HEALTH_PROBE_VERSION (v0.4.63), TEMPORAL_BUNDLE_CACHE, GOTOOLCHAIN.
set -euo pipefail
version="${1:-${GRPC_HEALTH_PROBE_VERSION:-v0.4.63}}"
# v0.4.63's go.mod asks for toolchain go1.27.4; the pinned go1.27.3 builds it as well.
export GOTOOLCHAIN="${GOTOOLCHAIN:-go1.27.3}"
cache="${TEMPORAL_BUNDLE_CACHE:-$HOME/.cache/temporal-bundle}/grpc-health-probe-$version"
if [[ -x "$cache/grpc-health-probe" ]]; then
  echo "$cache/grpc-health-probe"
  exit 0
fi
command -v go >/dev/null || { echo "error: go toolchain not found" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "building github.com/grpc-ecosystem/grpc-health-probe@$version (once; cached at $cache)" >&2
# go install MODULE@VERSION: the module has no replace directives, so no scratch module is needed.
GOBIN="$work" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" \
  "github.com/grpc-ecosystem/grpc-health-probe@$version" >&2
"$work/grpc-health-probe" -version >/dev/null
mkdir -p "$cache.tmp"
mv "$work/grpc-health-probe" "$cache.tmp/grpc-health-probe"
rm -rf "$cache" && mv "$cache.tmp" "$cache"
echo "$cache/grpc-health-probe"
