#!/usr/bin/env bash
# Entrypoint of the postgres stand-in image, written to the documented contract of the official
# image: initialise an empty PGDATA (initdb as POSTGRES_USER with POSTGRES_PASSWORD, create
# POSTGRES_DB, run /docker-entrypoint-initdb.d/* against a socket-only server started with the
# same `postgres` arguments), then exec the command. Started as root it fixes ownership and
# re-executes itself as postgres.
set -Eeuo pipefail

from_file() {  # VAR: take $VAR or the contents of ${VAR}_FILE
    local var="$1" file_var="${1}_FILE"
    if [[ -n "${!var:-}" && -n "${!file_var:-}" ]]; then
        echo "error: both $var and $file_var are set (but are exclusive)" >&2
        exit 1
    fi
    if [[ -n "${!file_var:-}" ]]; then
        export "$var"="$(<"${!file_var}")"
    fi
    unset "$file_var"
}

wants_help() {
    local arg
    for arg; do
        case "$arg" in -'?'|--help|--describe-config|-V|--version) return 0 ;; esac
    done
    return 1
}

run_init_files() {
    local f
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh)
                if [[ -x "$f" ]]; then echo "$0: running $f"; "$f"; else echo "$0: sourcing $f"; . "$f"; fi ;;
            *.sql) echo "$0: running $f"; sql -f "$f" ;;
            *.sql.gz) echo "$0: running $f"; gunzip -c "$f" | sql ;;
            *) [[ -e "$f" ]] && echo "$0: ignoring $f" ;;
        esac
    done
}

sql() {
    PGHOST= PGHOSTADDR= psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc \
        --dbname "${POSTGRES_DB}" "$@"
}

initialise() {
    if [[ -z "${POSTGRES_PASSWORD:-}" && "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]]; then
        cat >&2 <<'EOM'
Error: Database is uninitialized and superuser password is not specified.
       Set POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE), or POSTGRES_HOST_AUTH_METHOD=trust.
EOM
        exit 1
    fi
    # initdb wants a non-empty password file line even for an empty password.
    eval 'initdb --username="$POSTGRES_USER" --pwfile=<(printf "%s\n" "${POSTGRES_PASSWORD:-}") '"${POSTGRES_INITDB_ARGS:-}"
    local server_args=("$@")
    [[ "${server_args[0]:-}" == postgres ]] && server_args=("${server_args[@]:1}")
    local auth="${POSTGRES_HOST_AUTH_METHOD:-$(postgres -C password_encryption "${server_args[@]}")}"
    printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"

    export PGPASSWORD="${PGPASSWORD:-${POSTGRES_PASSWORD:-}}"
    PGUSER="${PGUSER:-$POSTGRES_USER}" pg_ctl -D "$PGDATA" -w start \
        -o "$(printf '%q ' "${server_args[@]}" -c listen_addresses='' -p "${PGPORT:-5432}")"
    if [[ "$POSTGRES_DB" != postgres ]]; then
        local exists
        exists="$(POSTGRES_DB=postgres sql --tuples-only --set db="$POSTGRES_DB" <<<"SELECT 1 FROM pg_database WHERE datname = :'db'")"
        [[ -n "${exists// /}" ]] || POSTGRES_DB=postgres sql --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db"'
    fi
    run_init_files
    PGUSER="${PGUSER:-$POSTGRES_USER}" pg_ctl -D "$PGDATA" -m fast -w stop
    unset PGPASSWORD
    echo "PostgreSQL init process complete; ready for start up."
}

if [[ "${1:-}" == -* ]]; then
    set -- postgres "$@"
fi

if [[ "${1:-}" == postgres ]] && ! wants_help "$@"; then
    from_file POSTGRES_PASSWORD
    from_file POSTGRES_USER
    export POSTGRES_USER="${POSTGRES_USER:-postgres}"
    from_file POSTGRES_DB
    export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
    from_file POSTGRES_INITDB_ARGS

    mkdir -p "$PGDATA"
    chmod 0700 "$PGDATA" 2>/dev/null || :
    mkdir -p /var/run/postgresql 2>/dev/null || :
    chmod 03775 /var/run/postgresql 2>/dev/null || :
    if [[ "$(id -u)" == 0 ]]; then
        find "$PGDATA" /var/run/postgresql \! -user postgres -exec chown postgres:postgres '{}' +
        exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
    fi
    if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
        initialise "$@"
    else
        echo "PostgreSQL Database directory appears to contain a database; Skipping initialization"
    fi
fi

exec "$@"
