#!/usr/bin/env bash
# `go install PACKAGE@VERSION` of a Go program whose module has no replace directives (so no
# scratch module is needed), static (CGO_ENABLED=0), cached by name and version so the second run
# is instant. The build scripts of single programs call it (build-health-probe.sh, build-coredns.sh).
# Usage: scripts/build-go-install.sh NAME PACKAGE VERSION [CHECK_FLAG]
#   -> prints the cached binary's path on stdout; CHECK_FLAG (e.g. -version) is run once after the build.
# Env: TEMPORAL_BUNDLE_CACHE, GOTOOLCHAIN.
set -euo pipefail
name="$1" package="$2" version="$3" check="${4:-}"
export GOTOOLCHAIN="${GOTOOLCHAIN:-go1.27.3}"
cache="${TEMPORAL_BUNDLE_CACHE:-$HOME/.cache/temporal-bundle}/$name-$version"
if [[ -x "$cache/$name" ]]; then
  echo "$cache/$name"
  exit 0
fi
command -v go >/dev/null || { echo "error: go toolchain not found" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "building $package@$version (once; cached at $cache)" >&2
GOBIN="$work" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "$package@$version" >&2
built="$work/$(basename "$package")"
if [[ -n "$check" ]]; then
  "$built" "$check" >&2
fi
mkdir -p "$cache.tmp"
mv "$built" "$cache.tmp/$name"
rm -rf "$cache" && mv "$cache.tmp" "$cache"
echo "$cache/$name"
