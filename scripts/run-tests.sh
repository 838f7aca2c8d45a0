#!/usr/bin/env bash
# The test command (`make test`): installs what is missing (idempotent, quick when all is there),
# then runs every tier against real infrastructure. A tier whose server or engine cannot be found
# fails; nothing is skipped for lack of infrastructure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/docker-engine.sh start
# --durations: where the time goes, in every CI log. Three workers (TEST_WORKERS; 0 runs in one
# process): the docker tier mostly waits on containers, so the other tiers run beside it
# (tests/conftest.py keeps each tier's shared stack or cluster on one worker).
exec python3 -m pytest tests -p no:cacheprovider --durations=15 -n "${TEST_WORKERS:-3}" --dist loadgroup "$@"
