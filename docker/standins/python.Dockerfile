# Stand-in for python:3.11-slim-bookworm (the base of our own image), built FROM the local
# debootstrap'd Debian bookworm image: Debian's python3 (3.11) with venv support.
ARG BASE_IMAGE=temporal-bundle-standin/debian:bookworm
FROM ${BASE_IMAGE}
ENV LANG=C.UTF-8
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends python3 python3-venv ca-certificates tzdata; \
    rm -rf /var/lib/apt/lists/*; \
    python3 --version
CMD ["python3"]
