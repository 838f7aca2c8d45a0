# Stand-in for temporalio/ui: the ui-server binary (Go module github.com/temporalio/ui-server/v2,
# web assets embedded) at /home/ui-server/ui-server with the module's config/docker.yaml template,
# user temporal (uid/gid 1000), port 8080, ENTRYPOINT ./start-ui-server.sh (runs
# `ui-server --env docker start`, so the same TEMPORAL_* environment variables configure it).
# Differences: Debian instead of Alpine; no dockerize; wget for health checks as busybox has.
ARG BASE_IMAGE=temporal-bundle-standin/debian:bookworm
FROM ${BASE_IMAGE}
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates tzdata wget; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --gid 1000 temporal; \
    useradd --uid 1000 --gid temporal --create-home --shell /bin/bash temporal; \
    install -d -o temporal -g temporal /home/ui-server /home/ui-server/config
WORKDIR /home/ui-server
COPY --chown=temporal:temporal ui-server ./ui-server
COPY --chown=temporal:temporal docker.yaml ./config/docker.yaml
COPY --chown=temporal:temporal ui-start.sh ./start-ui-server.sh
USER temporal
EXPOSE 8080
ENTRYPOINT ["./start-ui-server.sh"]
