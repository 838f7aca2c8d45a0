# Stand-in for prom/alertmanager, with Debian's own prometheus-alertmanager package (0.25). The
# contract it keeps: ENTRYPOINT the alertmanager binary (the command gives its flags), user nobody
# (65534), /alertmanager the storage directory owned by nobody, wget for health checks as busybox
# has. Differences: Debian instead of busybox; the binary is also at /bin/alertmanager.
ARG BASE_IMAGE=temporal-bundle-standin/debian:bookworm
FROM ${BASE_IMAGE}
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends prometheus-alertmanager wget ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    ln -sf /usr/bin/prometheus-alertmanager /bin/alertmanager; \
    install -d -o 65534 -g 65534 -m 0755 /alertmanager; \
    alertmanager --version; amtool --version
USER 65534:65534
WORKDIR /alertmanager
EXPOSE 9093
ENTRYPOINT ["/bin/alertmanager"]
CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"]
