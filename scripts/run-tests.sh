#!/usr/bin/env bash
# The test command (`make test`): installs what is missing (idempotent, quick when all is there),
# then runs every tier against real infrastructure. A tier whose server or engine cannot be found
# fails; nothing is skipped for lack of infrastructure.
#
# Two pytest processes side by side: the docker tier (one shared compose stack, mostly waiting on
# containers) and every other tier. `TEST_PARALLEL=0`, or any argument (a test path, -k ...),
# runs one process as pytest would. --durations: where the time goes, in every CI log.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/docker-engine.sh start
pytest=(python3 -m pytest -p no:cacheprovider --durations=15)
if [[ $# -gt 0 || "${TEST_PARALLEL:-1}" == 0 ]]; then
  exec "${pytest[@]}" tests "$@"
fi
logs="$(mktemp -d)"
"${pytest[@]}" tests/docker >"$logs/docker.log" 2>&1 &
docker_tier=$!
echo "docker tier: running beside the other tiers (pid $docker_tier; its log follows theirs)"
status=0
"${pytest[@]}" tests --ignore=tests/docker || status=$?
echo "---------------------------------------------------------------- docker tier"
tail -n +1 -f --pid="$docker_tier" "$logs/docker.log"
wait "$docker_tier" || status=$((status ? status : $?))
rm -rf "$logs"
exit "$status"
