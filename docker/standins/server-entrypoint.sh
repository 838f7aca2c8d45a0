#!/bin/sh
# Same contract as the official temporalio/server entrypoint (written for the stand-in): the
# server binds to the container's own address unless BIND_ON_IP says otherwise; when it binds to
# a wildcard, the broadcast address defaults to the container's address. Then `temporal-server
# start`, configured by the environment (TEMPORAL_SERVER_CONFIG_FILE_PATH, TEMPORAL_SERVICES, ...).
set -eu
own_address() { getent hosts "$(hostname)" | awk 'NR == 1 { print $1 }'; }
if [ -z "${BIND_ON_IP:-}" ]; then
    BIND_ON_IP="$(own_address)"
fi
export BIND_ON_IP
case "$BIND_ON_IP" in
    0.0.0.0|::0|::)
        if [ -z "${TEMPORAL_BROADCAST_ADDRESS:-}" ]; then
            TEMPORAL_BROADCAST_ADDRESS="$(own_address)"
        fi
        export TEMPORAL_BROADCAST_ADDRESS
        ;;
esac
exec temporal-server start
