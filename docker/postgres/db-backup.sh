#!/usr/bin/env bash
# pgBackRest driver of the db-backup and db-restore services (the PostgreSQL image, which carries
# Debian's pgbackrest 2.45 and jq; mounted read-only from docker/postgres/).
#
#   db-backup.sh schedule            forever: stanza-create once, then every DB_BACKUP_POLL seconds
#                                    a full backup when the last full one is DB_BACKUP_FULL_EVERY
#                                    old, else a differential one when the last backup of any type
#                                    is DB_BACKUP_DIFF_EVERY old; writes the metrics textfile
#   db-backup.sh backup full|diff    one backup now (make backup-db); its result is reported as the
#                                    schedule's are (last_run)
#   db-backup.sh info                the repository's `pgbackrest info --output=json` on stdout
#   db-backup.sh check [--confirm]   info, and that the restore target (postgres-data) is empty;
#                                    the info gets the end of the archived WAL added (archive_end)
#   db-backup.sh restore ARGS... [--confirm]
#                                    restore into postgres-data with pgbackrest's --set/--type/
#                                    --target (as `temporal-bundle pitr` printed them); promotes
#   db-backup.sh status              write the metrics textfile now
#
# Every failure is one `error: ...` line on stderr and a non-zero exit. Backups and restores hold
# an exclusive lock on the repository volume (flock, shared by every container that mounts it), so
# two never overlap; pgBackRest's own locks live there too (lock-path).
set -Eeuo pipefail

export PGBACKREST_CONFIG="${PGBACKREST_CONFIG:-/bundle/pgbackrest/pgbackrest.conf}"
SCHEDULE_ENV="${DB_BACKUP_ENV:-/bundle/pgbackrest/db-backup.env}"
LOCK_FILE="${DB_BACKUP_LOCK:-/var/lib/pgbackrest/lock/db-backup.flock}"
METRICS_FILE="${DB_BACKUP_METRICS:-/var/lib/db-backup-metrics/backup.prom}"
# "EXIT_CODE END_EPOCH TYPE" of the last backup that ran, scheduled or `make backup-db` (a container
# of its own: the file on the shared volume, not the schedule's memory, is what the report reads).
LAST_RUN_FILE="${METRICS_FILE%/*}/last-run"
DATA_ROOT="${DB_BACKUP_DATA_ROOT:-/var/lib/postgresql/data}"
PGDATA="${PGDATA:-$DATA_ROOT/pgdata}"
POLL="${DB_BACKUP_POLL:-60}"
RETRY="${DB_BACKUP_RETRY:-600}"
SOCKET="${DB_BACKUP_SOCKET:-/var/run/postgresql}"

fail() { printf 'error: %s\n' "$*" >&2; exit 1; }

[[ -r "$PGBACKREST_CONFIG" ]] || fail "$PGBACKREST_CONFIG is missing or unreadable: run the bootstrap (make up) first"
[[ -r "$SCHEDULE_ENV" ]] || fail "$SCHEDULE_ENV is missing or unreadable: run the bootstrap (make up) first"
# shellcheck disable=SC1090
. "$SCHEDULE_ENV"
STANZA="${DB_BACKUP_STANZA:?}"

# Printable ASCII only: a wrong passphrase makes pgbackrest quote decrypted garbage.
printable() { LC_ALL=C tr -cd '\11\12\40-\176' <<<"$1"; }

explain() {  # OUTPUT of a failed pgbackrest call -> one line
    local text first
    text="$(printable "$1")"
    if grep -qiE 'no space left on device|ENOSPC' <<<"$text"; then
        echo "the repository volume is full (no space left on device): free space on it or grow it (volume pgbackrest-repo); a backup cut short is never counted as one"
        return
    fi
    if grep -qE 'CryptoError|FormatError: key/value found outside of section|cipher header' <<<"$text"; then
        echo "the repository's passphrase does not match this bundle's (private/pgbackrest/repo-cipher.pass), or its info files are damaged: was the bundle restored from another cluster's archive?"
        return
    fi
    first="$(grep -m1 -E '(ERROR|ASSERT): \[[0-9]+\]' <<<"$text" | sed -E 's/.*(ERROR|ASSERT): \[[0-9]+\]: //' || true)"
    case "$first" in
        *"unable to acquire lock"*)
            echo "another pgBackRest backup or restore holds the repository's lock; try again when it has finished" ;;
        "") grep -v '^\s*$' <<<"$text" | tail -n1 ;;
        *) echo "$first" ;;
    esac
}

pgbr() {  # pgbackrest ARGS...: output on success; one error line and exit 1 on failure
    local out
    if ! out="$(pgbackrest --stanza="$STANZA" "$@" 2>&1)"; then
        fail "pgbackrest $1: $(explain "$out")"
    fi
    printf '%s\n' "$out"
}

take_lock() {
    mkdir -p "$(dirname "$LOCK_FILE")"
    exec 9>>"$LOCK_FILE"
    flock -n 9 || fail "another database backup or restore is running (lock $LOCK_FILE); try again when it has finished"
}

info_json() {
    local out
    if ! out="$(pgbackrest --stanza="$STANZA" --output=json info 2>&1)"; then
        fail "pgbackrest info: $(explain "$out")"
    fi
    out="$(printable "$out")"
    # A readable repository with a wrong passphrase answers too: status 99 and the reason per repo.
    local code
    code="$(jq -r '.[0].status.code // 99' <<<"$out")" || fail "pgbackrest info: not the JSON expected"
    case "$code" in
        0|1|2|3|6) ;;  # ok, no stanza yet, no backup yet, a backup running: the caller decides
        *) fail "pgbackrest info: $(explain "$(jq -r '[.[0].repo[]?.status.message] | join("; ")' <<<"$out")")" ;;
    esac
    printf '%s\n' "$out"
}

archive_end() {  # INFO_JSON -> {"segment": NAME, "commit": "YYYY-MM-DD HH:MM:SS.ffffff UTC"}, or null
    # pgBackRest's info names the archived WAL by segment only: the newest segments (up to 8) are
    # fetched one by one and pg_waldump gives the time of the last commit or abort record in them,
    # the latest time a recovery can reach (bootstrap/ops/pitr.py checks TIME against it).
    local id seg dir line="" found=""
    id="$(jq -r '.[0].archive[-1].id // ""' <<<"$1")"
    [[ -n "$id" ]] || { echo null; return; }
    dir="$(mktemp -d)"
    while read -r seg; do
        pgbackrest --stanza="$STANZA" archive-get "$seg" "$dir/$seg" >/dev/null 2>&1 || continue
        # pg_waldump stops with an error at the segment's unused tail: its exit code says nothing.
        line="$( (TZ=UTC pg_waldump --rmgr=Transaction "$dir/$seg" 2>/dev/null || true) \
            | sed -nE 's/.*desc: (COMMIT|ABORT) ([0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:.]+ UTC).*/\2/p' | tail -n1)"
        rm -f "$dir/$seg"
        if [[ -n "$line" ]]; then found="$seg"; break; fi
    done < <( (pgbackrest --stanza="$STANZA" repo-ls --recurse "archive/$STANZA/$id" 2>/dev/null || true) \
                 | grep -oE '[0-9A-F]{24}-[0-9a-f]{40}' | cut -c1-24 | sort -ru | head -n 8)
    rm -rf "$dir"
    if [[ -n "$found" ]]; then
        jq -cn --arg segment "$found" --arg commit "$line" '{segment: $segment, commit: $commit}'
    else
        echo null
    fi
}

with_archive_end() {  # INFO_JSON -> the same with "bundle-archive-end" on the stanza's entry
    local end
    end="$(archive_end "$1")"
    jq -c --argjson archive_end "$end" 'if length > 0 then .[0] += {"bundle-archive-end": $archive_end} else . end' <<<"$1" \
        || fail "cannot add the end of the archived WAL to the repository's info"
}

stanza_create() {
    pgbr stanza-create >/dev/null
}

backup() {  # full|diff: one backup under the lock, its result recorded for the report
    local type="$1" rc=0
    [[ "$type" == full || "$type" == diff ]] || fail "backup type must be full or diff, got '$type'"
    take_lock
    (backup_locked "$type") || rc=$?
    record_run "$rc" "$type"
    status 2>/dev/null || true
    return "$rc"
}

record_run() {  # EXIT_CODE TYPE
    local tmp="$LAST_RUN_FILE.tmp.$$"
    printf '%s %s %s\n' "$1" "$(date +%s)" "$2" >"$tmp" && chmod 0644 "$tmp" && mv -f "$tmp" "$LAST_RUN_FILE" \
        || echo "error: cannot record the backup's result in $LAST_RUN_FILE" >&2
}

last_run() {  # -> "EXIT_CODE END_EPOCH", or nothing when no backup has run yet
    local rc at
    [[ -r "$LAST_RUN_FILE" ]] && read -r rc at _ <"$LAST_RUN_FILE" || return 0
    [[ "$rc" =~ ^[0-9]{1,3}$ && "$at" =~ ^[0-9]{1,12}$ ]] && echo "$rc $at"
    return 0
}

backup_locked() {  # full|diff
    local type="$1"
    stanza_create
    echo "db-backup: $type backup of stanza $STANZA started at $(date -u +%FT%TZ)"
    local out
    if ! out="$(pgbackrest --stanza="$STANZA" backup --type="$type" --log-level-console=warn 2>&1)"; then
        # The database stopped mid-backup: pgBackRest's words depend on the moment (a closed
        # connection, a NULL result, ...); whether PostgreSQL still answers does not.
        if ! pg_isready --host="$SOCKET" --quiet; then
            fail "pgbackrest backup: the database stopped during it (PostgreSQL does not answer on $SOCKET): not counted as a backup; run it again once PostgreSQL is up ($(explain "$out"))"
        fi
        fail "pgbackrest backup: $(explain "$out")"
    fi
    local label
    label="$(info_json | jq -r '.[0].backup[-1].label // ""')"
    echo "db-backup: $type backup $label done at $(date -u +%FT%TZ)"
}

archiver_json() {  # pg_stat_archiver as JSON (epoch seconds), {} when PostgreSQL cannot be asked
    psql --host="$SOCKET" --username=postgres --dbname=postgres --no-psqlrc -XAtq -c "
        SELECT json_build_object(
          'archived_count', archived_count, 'failed_count', failed_count,
          'last_archived', coalesce(extract(epoch FROM last_archived_time), 0),
          'last_failed', coalesce(extract(epoch FROM last_failed_time), 0))
        FROM pg_stat_archiver" 2>/dev/null || echo '{}'
}

write_metrics() {  # INFO_JSON ARCHIVER_JSON
    local tmp="$METRICS_FILE.tmp.$$" run_status="" run_at=""
    read -r run_status run_at <<<"$(last_run)" || true
    jq -rn --argjson info "$1" --argjson arch "$2" --arg now "$(date +%s)" \
        --arg run_status "$run_status" --arg run_at "$run_at" '
        def backups: ($info[0].backup // []) | map(select((.error // false) | not));
        def last(t): [backups[] | select(t == null or .type == t) | .timestamp.stop] | max // 0;
        "# HELP temporal_bundle_db_backup_last_good_timestamp_seconds End of the newest good pgBackRest backup (0: none).",
        "# TYPE temporal_bundle_db_backup_last_good_timestamp_seconds gauge",
        "temporal_bundle_db_backup_last_good_timestamp_seconds \(last(null))",
        "# HELP temporal_bundle_db_backup_last_full_timestamp_seconds End of the newest good full backup (0: none).",
        "# TYPE temporal_bundle_db_backup_last_full_timestamp_seconds gauge",
        "temporal_bundle_db_backup_last_full_timestamp_seconds \(last("full"))",
        "# HELP temporal_bundle_db_backup_count Backups in the repository.",
        "# TYPE temporal_bundle_db_backup_count gauge",
        "temporal_bundle_db_backup_count \(backups | length)",
        "# HELP temporal_bundle_db_backup_repo_status pgbackrest info status code (0 ok, 2 no backup yet, 99 other).",
        "# TYPE temporal_bundle_db_backup_repo_status gauge",
        "temporal_bundle_db_backup_repo_status \($info[0].status.code // 99)",
        (if $run_status != "" then
          "# HELP temporal_bundle_db_backup_last_run_status Exit code of the last backup run, scheduled or make backup-db (0 ok).",
          "# TYPE temporal_bundle_db_backup_last_run_status gauge",
          "temporal_bundle_db_backup_last_run_status \($run_status)",
          "# HELP temporal_bundle_db_backup_last_run_timestamp_seconds When the last backup run ended.",
          "# TYPE temporal_bundle_db_backup_last_run_timestamp_seconds gauge",
          "temporal_bundle_db_backup_last_run_timestamp_seconds \($run_at)"
         else empty end),
        (if ($arch | has("archived_count")) then
          "# HELP temporal_bundle_wal_archived_total WAL segments archived (pg_stat_archiver).",
          "# TYPE temporal_bundle_wal_archived_total counter",
          "temporal_bundle_wal_archived_total \($arch.archived_count)",
          "# HELP temporal_bundle_wal_archive_failed_total Failed WAL archive attempts (pg_stat_archiver).",
          "# TYPE temporal_bundle_wal_archive_failed_total counter",
          "temporal_bundle_wal_archive_failed_total \($arch.failed_count)",
          "# HELP temporal_bundle_wal_last_archived_timestamp_seconds Last WAL segment archived (0: none).",
          "# TYPE temporal_bundle_wal_last_archived_timestamp_seconds gauge",
          "temporal_bundle_wal_last_archived_timestamp_seconds \($arch.last_archived)",
          "# HELP temporal_bundle_wal_last_failed_timestamp_seconds Last failed WAL archive attempt (0: none).",
          "# TYPE temporal_bundle_wal_last_failed_timestamp_seconds gauge",
          "temporal_bundle_wal_last_failed_timestamp_seconds \($arch.last_failed)"
         else empty end),
        "# HELP temporal_bundle_db_backup_report_timestamp_seconds When db-backup wrote this report.",
        "# TYPE temporal_bundle_db_backup_report_timestamp_seconds gauge",
        "temporal_bundle_db_backup_report_timestamp_seconds \($now)"
        ' >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$METRICS_FILE"
}

status() {
    local info
    info="$( (info_json) 2>/dev/null || echo '[{"status": {"code": 99}}]')"
    write_metrics "$info" "$(archiver_json)"
}

due() {  # INFO_JSON -> full | diff | "" (nothing due)
    jq -rn --argjson info "$1" --arg now "$(date +%s)" --arg full "$DB_BACKUP_FULL_EVERY" --arg diff "$DB_BACKUP_DIFF_EVERY" '
        ($info[0].backup // []) as $b
        | ([$b[] | select(.type == "full") | .timestamp.stop] | max // 0) as $last_full
        | ([$b[] | .timestamp.stop] | max // 0) as $last_any
        | ($now | tonumber) as $t
        | if $t - $last_full >= ($full | tonumber) then "full"
          elif $t - $last_any >= ($diff | tonumber) then "diff"
          else "" end'
}

schedule() {
    echo "db-backup: full every ${DB_BACKUP_FULL_EVERY}s, differential every ${DB_BACKUP_DIFF_EVERY}s, checked every ${POLL}s"
    local created=0 next_try=0 running="" info type rc
    trap 'exit 0' TERM INT
    while :; do
        if [[ "$created" == 0 ]]; then
            if (stanza_create) 2>/tmp/db-backup.err; then created=1; else tail -n1 /tmp/db-backup.err >&2; fi
        fi
        # A backup runs in the background, so the report below stays fresh however long it takes.
        if [[ -n "$running" ]] && ! kill -0 "$running" 2>/dev/null; then
            rc=0; wait "$running" || rc=$?
            running=""
            [[ "$rc" == 0 ]] || next_try=$(( $(date +%s) + RETRY ))
        fi
        if [[ "$created" == 1 && -z "$running" ]] && info="$( (info_json) 2>/tmp/db-backup.err)"; then
            type="$(due "$info")"
            if [[ -n "$type" && "$(date +%s)" -ge "$next_try" ]]; then
                (backup "$type") & running=$!
            fi
        fi
        status || echo "error: cannot write $METRICS_FILE" >&2
        sleep "$POLL" & wait $! || true
    done
}

data_empty() { [[ -z "$(ls -A "$DATA_ROOT" 2>/dev/null)" ]]; }

check_target() {  # [--confirm]
    if ! data_empty && [[ "${1:-}" != --confirm ]]; then
        fail "the restore target (volume postgres-data) is not empty: restore onto an empty engine, or pass CONFIRM=yes to move the present data aside (kept as pgdata.replaced-<time> in that volume)"
    fi
}

restore() {  # pgbackrest restore options (--set, --type, --target) [--confirm]
    local args=() confirm=""
    for arg; do
        case "$arg" in
            --confirm) confirm=--confirm ;;
            --set=*|--type=time|--type=default|--target=*) args+=("$arg") ;;
            *) fail "restore: unexpected argument '$arg'" ;;
        esac
    done
    check_target "$confirm"
    take_lock
    local aside=""
    if ! data_empty; then
        aside="$DATA_ROOT/pgdata.replaced-$(date -u +%Y%m%dT%H%M%SZ)"
        mv "$PGDATA" "$aside"
        echo "db-restore: moved the present data directory aside to $aside"
    fi
    install -d -m 0700 "$PGDATA"
    # Promote once TIME is reached (pgBackRest takes the option only with a target; at the end of
    # the archive, type default, PostgreSQL promotes by itself).
    [[ " ${args[*]} " != *" --type=time "* ]] || args+=(--target-action=promote)
    local out
    if ! out="$(pgbackrest --stanza="$STANZA" restore "${args[@]}" \
            --recovery-option="restore_command=pgbackrest --config=$PGBACKREST_CONFIG --stanza=$STANZA archive-get %f \"%p\"" \
            --log-level-console=warn 2>&1)"; then
        rm -rf "$PGDATA"
        [[ -z "$aside" ]] || mv "$aside" "$PGDATA"
        fail "pgbackrest restore: $(explain "$out")"
    fi
    echo "db-restore: restored into $PGDATA (${args[*]}); PostgreSQL replays the archived WAL and promotes when it starts"
}

case "${1:-}" in
    schedule) schedule ;;
    backup) backup "${2:-}" ;;
    info) info_json ;;
    check) check_target "${2:-}"; info="$(info_json)"; with_archive_end "$info" ;;
    restore) shift; restore "$@" ;;
    status) status ;;
    *) fail "usage: db-backup.sh schedule | backup full|diff | info | check [--confirm] | restore ARGS... | status" ;;
esac
