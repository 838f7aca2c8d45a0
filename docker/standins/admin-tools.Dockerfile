# Stand-in for temporalio/admin-tools: the `temporal` CLI and temporal-sql-tool in
# /usr/local/bin, the SQL schemas under /etc/temporal/schema (the tool also embeds them, see
# --schema-name), user temporal (uid/gid 1000), and a CMD that idles until stopped.
# Differences: Debian instead of Alpine; no cassandra/elasticsearch tools and no tdbg.
ARG BASE_IMAGE=temporal-bundle-standin/debian:bookworm
FROM ${BASE_IMAGE}
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates tzdata; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --gid 1000 temporal; \
    useradd --uid 1000 --gid temporal --create-home --shell /bin/sh temporal
COPY temporal temporal-sql-tool /usr/local/bin/
COPY schema/ /etc/temporal/schema/
USER temporal
CMD ["sh", "-c", "trap exit INT HUP TERM; sleep infinity & wait"]
