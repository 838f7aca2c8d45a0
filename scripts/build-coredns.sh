#!/usr/bin/env bash
# Build CoreDNS (github.com/coredns/coredns), the cluster DNS of the kube tier's node
# (tests/support/kube_node.py: its `kubernetes` plugin answers <service>.<namespace>.svc names from
# the API server), from its Go module at a released tag, cached by version.
# Usage: scripts/build-coredns.sh [VERSION]   -> prints the cached binary's path on stdout.
# Env: COREDNS_VERSION (v1.14.7), TEMPORAL_BUNDLE_CACHE, GOTOOLCHAIN.
set -euo pipefail
version="${1:-${COREDNS_VERSION:-v1.14.7}}"
export GOTOOLCHAIN="${GOTOOLCHAIN:-go1.27.3}"
cache="${TEMPORAL_BUNDLE_CACHE:-$HOME/.cache/temporal-bundle}/coredns-$version"
if [[ -x "$cache/coredns" ]]; then
  echo "$cache/coredns"
  exit 0
fi
command -v go >/dev/null || { echo "error: go toolchain not found" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "building github.com/coredns/coredns@$version (once; cached at $cache)" >&2
# Its go.mod has no replace directives: go install MODULE@VERSION builds the released main package.
GOBIN="$work" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$version" >&2
"$work/coredns" -version >&2
mkdir -p "$cache.tmp"
mv "$work/coredns" "$cache.tmp/coredns"
rm -rf "$cache" && mv "$cache.tmp" "$cache"
echo "$cache/coredns"
