#!/usr/bin/env bash
# The test command (`make test`): installs what is missing (idempotent, quick when all is there),
# then runs every tier against real infrastructure. A tier whose server or engine cannot be found
# fails; nothing is skipped for lack of infrastructure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/docker-engine.sh start
# --durations: where the time goes, in every CI log.
exec python3 -m pytest tests -p no:cacheprovider --durations=15 "$@"
