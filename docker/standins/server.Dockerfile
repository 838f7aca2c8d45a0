# Stand-in for temporalio/server (built from the same Go module release as the official image).
# The contract it keeps: temporal-server in /usr/local/bin, user temporal (uid/gid 1000),
# WORKDIR /etc/temporal, CMD /etc/temporal/entrypoint.sh, which derives BIND_ON_IP /
# TEMPORAL_BROADCAST_ADDRESS from the container's address and execs `temporal-server start`, so
# TEMPORAL_SERVER_CONFIG_FILE_PATH and TEMPORAL_SERVICES select the config and the services.
# Differences: Debian instead of Alpine.
ARG BASE_IMAGE=temporal-bundle-standin/debian:bookworm
FROM ${BASE_IMAGE}
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates tzdata; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --gid 1000 temporal; \
    useradd --uid 1000 --gid temporal --create-home --shell /bin/sh temporal
COPY temporal-server /usr/local/bin/temporal-server
COPY server-entrypoint.sh /etc/temporal/entrypoint.sh
WORKDIR /etc/temporal
USER temporal
CMD ["/etc/temporal/entrypoint.sh"]
