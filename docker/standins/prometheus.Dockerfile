# Stand-in for prom/prometheus, with Debian's own prometheus package (2.42). The contract it keeps:
# ENTRYPOINT the prometheus binary (the command gives its flags), promtool on PATH, user nobody
# (65534), /prometheus the storage directory owned by nobody, wget for health checks as busybox
# has. Differences: Debian instead of busybox; the web console libraries are Debian's.
ARG BASE_IMAGE=temporal-bundle-standin/debian:bookworm
FROM ${BASE_IMAGE}
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends prometheus wget ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    install -d -o 65534 -g 65534 -m 0755 /prometheus; \
    prometheus --version; promtool --version
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
