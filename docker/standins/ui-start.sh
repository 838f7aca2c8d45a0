#!/bin/bash
# Stand-in for the official UI image's start script: `bash` as an argument opens a shell,
# anything else starts the server with ./config/docker.yaml (a template read from TEMPORAL_*).
set -eu -o pipefail
for arg in "$@"; do
    if [ "$arg" = bash ]; then exec bash; fi
done
exec ./ui-server --env docker start
