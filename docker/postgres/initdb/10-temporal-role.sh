#!/usr/bin/env bash
# First start only (official postgres image contract: /docker-entrypoint-initdb.d): the role
# Temporal logs in as. No password: pg_hba.conf authenticates it by client certificate. CREATEDB
# lets the schema job create the two databases it owns (temporal-sql-tool create).
set -euo pipefail
role="${TEMPORAL_DB_USER:-temporal}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc --dbname postgres \
    --set role="$role" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN CREATEDB', :'role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')\gexec
SQL
