# Stand-in for the official postgres:15-bookworm image, with Debian's own postgresql-15 package.
# The contract it keeps: user postgres (uid/gid 999), PGDATA=/var/lib/postgresql/data,
# binaries on PATH from /usr/lib/postgresql/15/bin, ENTRYPOINT docker-entrypoint.sh + CMD
# postgres, POSTGRES_USER / POSTGRES_PASSWORD(_FILE) / POSTGRES_DB / POSTGRES_INITDB_ARGS /
# POSTGRES_HOST_AUTH_METHOD, /docker-entrypoint-initdb.d (*.sh, *.sql, *.sql.gz) on first start,
# `postgres -c ...` arguments passed through (also to the init-time server), STOPSIGNAL SIGINT.
# Differences: no gosu (setpriv steps down from root), C.UTF-8 instead of en_US.utf8.
# Also what docker/postgres/Dockerfile adds to the official image: Debian's pgbackrest (2.45) and
# jq, and the repository and metrics directories owned by postgres (so this stand-in is the
# bundle's postgres image, BUNDLE_POSTGRES_IMAGE, as it is).
ARG BASE_IMAGE=temporal-bundle-standin/debian:bookworm
FROM ${BASE_IMAGE}
ENV PG_MAJOR=15 LANG=C.UTF-8
RUN set -eux; \
    groupadd --system --gid 999 postgres; \
    useradd --system --uid 999 --gid postgres --home-dir /var/lib/postgresql --shell /bin/bash postgres; \
    install -d -o postgres -g postgres -m 1777 /var/lib/postgresql; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends postgresql-common; \
    sed -ri 's/^#?\s*create_main_cluster\s*=.*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf; \
    apt-get install -y --no-install-recommends "postgresql-$PG_MAJOR" ca-certificates tzdata; \
    rm -rf /var/lib/apt/lists/*; \
    install -d -o postgres -g postgres -m 3777 /var/run/postgresql; \
    mkdir /docker-entrypoint-initdb.d
ENV PATH=$PATH:/usr/lib/postgresql/15/bin PGDATA=/var/lib/postgresql/data
RUN install -d -o postgres -g postgres -m 1777 "$PGDATA"; postgres --version
# A layer of its own, after the server's: the layers above stay cached.
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends pgbackrest jq; \
    rm -rf /var/lib/apt/lists/*; \
    install -d -o postgres -g postgres -m 0750 /var/lib/pgbackrest; \
    install -d -o postgres -g postgres -m 0755 /var/lib/db-backup-metrics; \
    pgbackrest version
VOLUME /var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENTRYPOINT ["docker-entrypoint.sh"]
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
