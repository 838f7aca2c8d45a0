#!/usr/bin/env bash
# Build CoreDNS (github.com/coredns/coredns), the cluster DNS of the kube tier's node
# (tests/support/kube_node.py: its `kubernetes` plugin answers <service>.<namespace>.svc names from
# the API server), from its Go module at a released tag, cached by version.
# Usage: scripts/build-coredns.sh [VERSION]   -> prints the cached binary's path on stdout.
# Env: COREDNS_VERSION (v1.14.7), TEMPORAL_BUNDLE_CACHE, GOTOOLCHAIN.
set -euo pipefail
version="${1:-${COREDNS_VERSION:-v1.14.7}}"
exec bash "$(dirname "$0")/build-go-install.sh" coredns github.com/coredns/coredns "$version" -version
