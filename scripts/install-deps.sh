#!/usr/bin/env bash
# Everything the tests need on a fresh Debian machine: system packages, the Python package with
# its test extras, the compose v2 plugin, and every build the tests use (scripts/prebuild.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# chromium: the Web UI browser tests (Playwright launches it by path; no browser download).
# softhsm2: a real PKCS#11 token for keys.backend pkcs11 (tests/hsm).
for pkg in docker.io iptables debootstrap postgresql openssl curl chromium softhsm2; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

python3 -m pip install -q --disable-pip-version-check -e ".[test]"
if [[ -f scripts/install-compose.sh ]]; then
  bash scripts/install-compose.sh
fi
# The Go builds and images, in parallel; cached, so a warm run only checks them.
bash scripts/prebuild.sh
