#!/usr/bin/env bash
# Build kube-network-policies (sigs.k8s.io/kube-network-policies, Kubernetes SIG Network's
# NetworkPolicy implementation), the kube tier node's NetworkPolicy enforcer
# (tests/support/kube_netpol.py), from its Go module at a released tag, cached by version.
# Usage: scripts/build-kube-network-policies.sh [VERSION]   -> prints the cached binary's path on stdout.
# Env: KUBE_NETWORK_POLICIES_VERSION (v0.8.0), TEMPORAL_BUNDLE_CACHE, GOTOOLCHAIN.
set -euo pipefail
version="${1:-${KUBE_NETWORK_POLICIES_VERSION:-v0.8.0}}"
exec bash "$(dirname "$0")/build-go-install.sh" kube-network-policies sigs.k8s.io/kube-network-policies/cmd "$version"
