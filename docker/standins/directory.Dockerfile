# Not an image of the bundle: the tests' company directory, Debian's slapd (OpenLDAP 2.5) with
# ldap-utils, for tests/docker/test_directory_compose.py. The tests generate its slapd.conf, TLS
# pair and data (tests/support/ldap.py) and mount them; the package's own database is removed.
ARG BASE_IMAGE=temporal-bundle-standin/debian:bookworm
FROM ${BASE_IMAGE}
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends slapd ldap-utils; \
    rm -rf /var/lib/apt/lists/* /var/lib/ldap/* /etc/ldap/slapd.d; \
    slapd -VV 2>&1 | head -1
EXPOSE 636
ENTRYPOINT ["/usr/sbin/slapd"]
