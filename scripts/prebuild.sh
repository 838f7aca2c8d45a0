#!/usr/bin/env bash
# Every build the tests need, side by side instead of one after another, each cached by version
# (a warm run only checks the caches): the Go builds of temporal-server (the pinned release and
# the upgrade test's previous one), Dex, ui-server, configcheck, grpc-health-probe, the Kubernetes
# cluster (control plane and node), CoreDNS and kube-network-policies of the kube tier; the Debian
# base image; then the stand-in images of both releases, which need all of those but the kube tier's.
# Each job logs to build/prebuild/<job>.log; the figures printed are wall seconds per job.
# Env: UPGRADE_FROM_RELEASE (1.31.2), TEMPORAL_BUNDLE_CACHE, STANDIN_PREFIX, GOTOOLCHAIN.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN="${GOTOOLCHAIN:-go1.27.3}"
old_release="${UPGRADE_FROM_RELEASE:-1.31.2}"
logs=build/prebuild
mkdir -p "$logs"

declare -A pids=()
start_job() {  # NAME COMMAND...: run in the background, timing it into its log
  local name="$1"
  shift
  ( started=$SECONDS; "$@"; echo "prebuild $name: $((SECONDS - started))s" ) >"$logs/$name.log" 2>&1 &
  pids[$name]=$!
}

wait_jobs() {  # [NAME...] (default: all): fails, after they all ended, if any failed; prints its log's tail
  local failed=0 name names=("$@")
  [[ ${#names[@]} -gt 0 ]] || names=("${!pids[@]}")
  for name in "${names[@]}"; do
    if wait "${pids[$name]}"; then
      tail -n 1 "$logs/$name.log"
    else
      failed=1
      echo "error: prebuild job $name failed (log: $logs/$name.log)" >&2
      tail -n 20 "$logs/$name.log" >&2
    fi
    unset "pids[$name]"
  done
  return "$failed"
}

configcheck() {  # after temporal-server: its go.mod follows the server's, so modules are shared
  bash scripts/build-temporal.sh
  python3 -c 'from tests.support.binaries import configcheck_bin; print(configcheck_bin())'
}

started=$SECONDS
bash scripts/docker-engine.sh start >/dev/null
start_job temporal configcheck
start_job "temporal-$old_release" bash scripts/build-temporal.sh "$old_release"
start_job dex bash scripts/build-dex.sh
start_job grpc-health-probe bash scripts/build-health-probe.sh
start_job ui-server bash scripts/build-images.sh ui-server
start_job base-image bash scripts/build-images.sh base
start_job kubernetes bash scripts/build-kubernetes.sh
start_job coredns bash scripts/build-coredns.sh
start_job kube-network-policies bash scripts/build-kube-network-policies.sh
# The stand-ins need every build but the kube tier's (Kubernetes the longest): they are built while it still runs.
wait_jobs temporal "temporal-$old_release" dex grpc-health-probe ui-server base-image
# One build-images.sh at a time: they share build/images/ for their contexts.
start_job standins bash scripts/build-images.sh standins
wait_jobs standins
start_job "standins-$old_release" env TEMPORAL_VERSION="$old_release" bash scripts/build-images.sh standins
wait_jobs "standins-$old_release"
wait_jobs
echo "prebuild: every build ready in $((SECONDS - started))s"
