#!/bin/sh
# The schema job (admin-tools image): create both databases and bring their schemas to the
# version this temporal-sql-tool ships, over TLS with the database client certificate. Every step
# is idempotent: `create` ignores an existing database, `setup-schema -v 0.0` keeps existing
# version tables, `update-schema` applies only the versions not yet applied.
# Connection settings come from the environment (SQL_PLUGIN, SQL_HOST, SQL_PORT, SQL_USER,
# SQL_TLS, SQL_TLS_CA_FILE, SQL_TLS_CERT_FILE, SQL_TLS_KEY_FILE, SQL_TLS_SERVER_NAME).
set -eu
: "${TEMPORAL_DB:=temporal}"
: "${TEMPORAL_VISIBILITY_DB:=temporal_visibility}"
: "${SCHEMA_ROOT:=postgresql/v12}"

run() {
    echo "+ temporal-sql-tool --db $*" | sed 's/ --schema-name / /'
    temporal-sql-tool --db "$@"
}

for pair in "$TEMPORAL_DB:temporal" "$TEMPORAL_VISIBILITY_DB:visibility"; do
    db="${pair%%:*}"
    schema="${pair#*:}"
    run "$db" create
    run "$db" setup-schema -v 0.0
    run "$db" update-schema --schema-name "$SCHEMA_ROOT/$schema"
done
echo "schema: $TEMPORAL_DB and $TEMPORAL_VISIBILITY_DB are up to date"
