#!/usr/bin/env bash
# Everything the tests need on a fresh Debian machine: system packages, the Python package with
# its test extras, the compose v2 plugin, and every build the tests use (scripts/prebuild.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# chromium: the Web UI browser tests (Playwright launches it by path; no browser download);
# libnss3-tools: certutil, which gives that browser an NSS database trusting the bundle's CA.
# gcc, libc6-dev: the Dex stand-in is built with cgo (its SQLite storage), as the official image.
# softhsm2: a real PKCS#11 token for keys.backend pkcs11 (tests/hsm).
# slapd, ldap-utils: a real OpenLDAP directory behind Dex's LDAP connector (tests/support/ldap.py
# runs its own slapd from a generated config; the package's own instance is left unconfigured).
# containernetworking-plugins: the CNI bridge/host-local plugins of the kube tier's node (its
# containerd and runc are docker.io's dependencies; tests/support/kube_node.py).
for pkg in docker.io iptables debootstrap postgresql openssl curl chromium libnss3-tools gcc libc6-dev softhsm2 slapd ldap-utils containernetworking-plugins; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  # No system-wide directory: the tests start slapd themselves, on a loopback port of their own.
  echo "slapd slapd/no_configuration boolean true" | debconf-set-selections
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

python3 -m pip install -q --disable-pip-version-check -e ".[test]"
if [[ -f scripts/install-compose.sh ]]; then
  bash scripts/install-compose.sh
fi
# The Go builds and images, in parallel; cached, so a warm run only checks them.
bash scripts/prebuild.sh
