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
exec bash "$(dirname "$0")/build-go-install.sh" grpc-health-probe github.com/grpc-ecosystem/grpc-health-probe \
  "$version" -version
