#!/bin/sh
# Entrypoint of the bundle image.
#   (no arguments)          temporal-bundle init   (the compose `bootstrap` service)
#   COMMAND [ARGS...]       temporal-bundle COMMAND ARGS, for every temporal-bundle command:
#                           docker compose run --rm bootstrap generate-certs
#   anything else           run as given (sh, temporal, python3, ...)
# BUNDLE_CONFIG, BUNDLE_DIR, BUNDLE_OWNERS come from the environment, so `docker exec CONTAINER
# temporal-bundle ...` behaves the same as a command given here.
#
# Only for `init`, and only where the compose file asks through these variables:
#   BUNDLE_LOCK_OWNER=UID:GID  pre-create $BUNDLE_DIR/.bundle.lock with this owner, so the
#                              token refresher (non-root) can take the same lock as the bootstrap
#   BUNDLE_TOOLS_DIR=DIR       copy grpc-health-probe (the server's health check: its image ships
#                              without a client) and the `temporal` CLI there
#   BUNDLE_PG_PASSWORD_FILE=F  create a random PostgreSQL superuser password once (the postgres
#                              image refuses to initialise without one; pg_hba never accepts
#                              passwords, so it is never used to log in), owned like F's directory
#
# keys.backend pkcs11 with the image's SoftHSM2 (docker-compose.pkcs11.yml), for every command:
#   BUNDLE_SOFTHSM_TOKEN=LABEL      initialise that token first if the token directory has none,
#   BUNDLE_SOFTHSM_PIN_FILE=F       with the user PIN from F and a random SO PIN (kept nowhere)
#   BUNDLE_SOFTHSM_OWNER=UID:GID    afterwards, give the token files (SoftHSM2 writes them 0600)
#                                   to the non-root services that sign or unwrap with them
set -eu

is_command() {
    case "$1" in
        init|generate-certs|mint-tokens|render-config|serve-jwks|serve-codec|serve-exchange|serve-ui-gate|register-namespaces|check-expiry|serve-expiry-metrics|rotate|export-helm|backup|show-admin-password|compose-env|verify|-h|--help|--version)
            return 0 ;;
    esac
    return 1
}

prepare_init() {
    dir="${BUNDLE_DIR:-/bundle}"
    if [ -n "${BUNDLE_LOCK_OWNER:-}" ] && [ "$(id -u)" = 0 ]; then
        touch "$dir/.bundle.lock"
        chown "$BUNDLE_LOCK_OWNER" "$dir/.bundle.lock"
        chmod 0600 "$dir/.bundle.lock"
    fi
    if [ -d "$dir/private" ] && [ "$(id -u)" = 0 ]; then
        chmod 0700 "$dir/private"
    fi
}

copy_tool() {  # NAME WHAT: replace $BUNDLE_TOOLS_DIR/NAME atomically when it differs
    tool="$(command -v "$1")"
    if ! cmp -s "$tool" "$BUNDLE_TOOLS_DIR/$1"; then
        cp "$tool" "$BUNDLE_TOOLS_DIR/.$1.tmp"
        chmod 0755 "$BUNDLE_TOOLS_DIR/.$1.tmp"
        mv "$BUNDLE_TOOLS_DIR/.$1.tmp" "$BUNDLE_TOOLS_DIR/$1"
        echo "wrote $BUNDLE_TOOLS_DIR/$1: $2"
    fi
}

after_init() {
    if [ -n "${BUNDLE_TOOLS_DIR:-}" ]; then
        copy_tool grpc-health-probe "the server's gRPC health check"
        copy_tool temporal "temporal CLI (docker/bench/docker-compose.plain.yml checks with it)"
    fi
    if [ -n "${BUNDLE_PG_PASSWORD_FILE:-}" ] && [ ! -s "$BUNDLE_PG_PASSWORD_FILE" ]; then
        pw_dir="$(dirname "$BUNDLE_PG_PASSWORD_FILE")"
        umask 077
        python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$BUNDLE_PG_PASSWORD_FILE.tmp"
        chown "$(stat -c %u:%g "$pw_dir")" "$BUNDLE_PG_PASSWORD_FILE.tmp"
        mv "$BUNDLE_PG_PASSWORD_FILE.tmp" "$BUNDLE_PG_PASSWORD_FILE"
        echo "wrote $BUNDLE_PG_PASSWORD_FILE: random PostgreSQL superuser password (never accepted over the network)"
    fi
}

softhsm_dir() {
    sed -n 's/^directories.tokendir *= *//p' "${SOFTHSM2_CONF:-/etc/softhsm/softhsm2.conf}"
}

softhsm_prepare() {
    label="${BUNDLE_SOFTHSM_TOKEN:-}"
    [ -n "$label" ] || return 0
    if softhsm2-util --show-slots | awk -v l="$label" '$1 == "Label:" { sub(/^[ \t]*Label:[ \t]*/, ""); sub(/[ \t]+$/, ""); if ($0 == l) found = 1 } END { exit !found }'; then
        return 0
    fi
    pin_file="${BUNDLE_SOFTHSM_PIN_FILE:?BUNDLE_SOFTHSM_PIN_FILE: the user PIN file}"
    if [ ! -s "$pin_file" ]; then
        echo "error: SoftHSM2 token $label: no PIN in $pin_file (HSM_PIN_FILE on the host)" >&2
        exit 1
    fi
    so_pin="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
    softhsm2-util --init-token --free --label "$label" --pin "$(cat "$pin_file")" --so-pin "$so_pin" >/dev/null
    echo "initialised SoftHSM2 token $label (user PIN from $pin_file)"
}

softhsm_chown() {
    if [ -n "${BUNDLE_SOFTHSM_OWNER:-}" ] && [ "$(id -u)" = 0 ]; then
        chown -R "$BUNDLE_SOFTHSM_OWNER" "$(softhsm_dir)"
    fi
}

if [ "$#" -eq 0 ]; then
    set -- init
fi

if ! is_command "$1"; then
    exec "$@"
fi

softhsm_prepare
softhsm_chown
if [ "$1" = init ]; then
    prepare_init
    rc=0
    temporal-bundle "$@" || rc=$?
    softhsm_chown
    [ "$rc" = 0 ] || exit "$rc"
    after_init
    exit 0
fi
if [ -n "${BUNDLE_SOFTHSM_OWNER:-}" ] && [ "$(id -u)" = 0 ]; then
    rc=0
    temporal-bundle "$@" || rc=$?
    softhsm_chown
    exit "$rc"
fi
exec temporal-bundle "$@"
