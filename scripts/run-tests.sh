#!/usr/bin/env bash
# The test command (`make test`): installs what is missing (idempotent, quick when all is there),
# then runs every tier against real infrastructure. A tier whose server or engine cannot be found
# fails; nothing is skipped for lack of infrastructure.
#
# Four pytest processes side by side, as the tiers mostly wait on servers and containers: the
# docker modules on the one shared compose stack, then the rotation tier (crash recovery, ~3 min);
# the docker modules that start stacks of their own (marker own_stack); the server tier (Temporal
# servers of its own), then the kube tier (~13 min: its rotation pod waits 11 min for the kubelet to
# rotate a 10-minute token while the other kube modules run on the same node; one node at a time,
# as a node owns its bridge and its iptables chains); and every other tier. The two longest chains, server and kube, share a lane with nothing else. The kube
# tier ran as a fifth process once: the two cores were 90 % busy and the fault matrix, the restores
# and a pod's exchange timed out in turn, a different one each run. Port blocks are claimed with lock files (tests/support/ports.py), so the processes never
# collide. `TEST_PARALLEL=0`, or any argument (a test path, -k ...), runs one process as pytest
# would. --durations: where the time goes, in every CI log.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/docker-engine.sh start
pytest=(python3 -m pytest -p no:cacheprovider --durations=15)
if [[ $# -gt 0 || "${TEST_PARALLEL:-1}" == 0 ]]; then
  exec "${pytest[@]}" tests "$@"
fi
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
pids=() names=()
beside() {  # NAME COMMAND...: run in the background, its log kept for later
  local name="$1"; shift
  "$@" >"$logs/${#pids[@]}.log" 2>&1 &
  pids+=("$!") names+=("$name")
  echo "$name: running beside the other tiers (pid $!; its log follows theirs)"
}
one_after_the_other() {  # each pytest run in turn; the first failure's status
  local status=0
  for tier in "$@"; do
    # shellcheck disable=SC2086  # each tier is a path and its pytest options
    "${pytest[@]}" $tier || status=$((status ? status : $?))
  done
  return "$status"
}
shared_stack_then_rotation() {  # the first failure's status
  local status=0
  "${pytest[@]}" tests/docker -m "not own_stack" || status=$?
  "${pytest[@]}" tests/rotation || status=$((status ? status : $?))
  return "$status"
}
beside "docker tier, shared stack; then the rotation tier" shared_stack_then_rotation
beside "docker tier, own stacks" "${pytest[@]}" tests/docker -m own_stack
# Chromium aborts a navigation whenever Docker adds or removes an interface on this host
# (ERR_NETWORK_CHANGED), which the docker tiers do all along: the server tier's browser test runs
# after them, on a quiet host.
browser_after=tests/server/test_ldap_browser.py
beside "server tier; then the kube tier" one_after_the_other "tests/server --ignore=$browser_after" tests/kube
status=0
"${pytest[@]}" tests --ignore=tests/docker --ignore=tests/rotation --ignore=tests/server --ignore=tests/kube \
  --ignore=tests/unit || status=$?
# The unit tier is CPU-bound (fuzzing, keys, archives): at a lower priority it takes the CPU the
# stacks leave idle, so the fault matrix and the restores measure the stack, not the two cores it
# shares (a measured run was 90 % busy, and recovery bounds were missed by seconds). What bounds a
# latency keeps the normal priority: the codec tier above, and the key services' memory-limit test.
timed=tests/unit/test_key_services_memory_limit.py
"${pytest[@]}" "$timed" || status=$((status ? status : $?))
nice -n 10 "${pytest[@]}" tests/unit --deselect "$timed" || status=$((status ? status : $?))
for i in "${!pids[@]}"; do
  echo "---------------------------------------------------------------- ${names[$i]}"
  tail -n +1 -f --pid="${pids[$i]}" "$logs/$i.log"
  wait "${pids[$i]}" || status=$((status ? status : $?))
done
echo "---------------------------------------------------------------- server tier's browser test, after the docker tiers"
"${pytest[@]}" "$browser_after" || status=$((status ? status : $?))
exit "$status"
