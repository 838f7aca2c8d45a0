# Stand-in for dexidp/dex: the dex binary (built from its Go module at the pinned version by
# scripts/build-dex.sh, cached) at /usr/local/bin/dex, user dex (uid/gid 1001) as in the official
# image, wget for the health check as busybox has. Runs `dex serve CONFIG` given as the command.
# Differences: Debian instead of Alpine; no gomplate entrypoint (our config has no templating);
# built with cgo like the official image, for the SQLite storage the bundle uses; /var/dex owned
# by dex as there, so a fresh named volume mounted on it is writable by Dex.
ARG BASE_IMAGE=temporal-bundle-standin/debian:bookworm
FROM ${BASE_IMAGE}
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates wget; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --gid 1001 dex; \
    useradd --uid 1001 --gid dex --no-create-home --shell /usr/sbin/nologin dex; \
    install -d -o 1001 -g 1001 -m 0700 /var/dex
COPY dex /usr/local/bin/dex
USER dex
EXPOSE 5556
CMD ["dex", "serve", "/etc/dex/config.yaml"]
