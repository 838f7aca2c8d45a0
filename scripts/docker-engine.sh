#!/usr/bin/env bash
# Make a Docker engine reachable, starting one if needed. Idempotent; used by the tests and CI.
#   scripts/docker-engine.sh start   (default)  start dockerd unless `docker info` already works
#   scripts/docker-engine.sh status             exit 0 if the engine answers
#   scripts/docker-engine.sh stop               stop the dockerd this script started
# Env: DOCKER_DATA_ROOT (default /var/lib/docker), DOCKER_ENGINE_LOG, DOCKER_ENGINE_TIMEOUT (s).
# An engine `docker info` already reaches (Docker Desktop, rootless, DOCKER_HOST) is used as it is,
# by any user. Only without one does it install Debian's engine and start dockerd (root only).
# The compose v2 plugin (scripts/install-compose.sh, per user) is added when `docker compose` is missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
action="${1:-start}"
data_root="${DOCKER_DATA_ROOT:-/var/lib/docker}"
log="${DOCKER_ENGINE_LOG:-/var/log/temporal-bundle-dockerd.log}"
pidfile="/var/run/temporal-bundle-dockerd.pid"
timeout="${DOCKER_ENGINE_TIMEOUT:-60}"

engine_up() { docker info >/dev/null 2>&1; }

case "$action" in
  status)
    engine_up && { echo "docker engine: up"; exit 0; }
    echo "docker engine: not reachable" >&2; exit 1 ;;
  stop)
    if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      kill "$(cat "$pidfile")"
      for _ in $(seq 1 30); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 1; done
      rm -f "$pidfile"
    fi
    exit 0 ;;
  start) ;;
  *) echo "usage: $0 [start|status|stop]" >&2; exit 2 ;;
esac

ensure_compose() {
  docker compose version >/dev/null 2>&1 || bash "$here/install-compose.sh" >&2
}

# First any engine the docker CLI already reaches, as any user: Docker Desktop, rootless, a remote
# DOCKER_HOST or context. Nothing is installed or started for it.
if command -v docker >/dev/null && engine_up; then
  ensure_compose
  echo "docker engine: up (${DOCKER_HOST:-$(docker context show 2>/dev/null || echo default)})"
  exit 0
fi

# Only now a local engine of our own: install Debian's (root only) and start dockerd.
if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null || ! command -v iptables >/dev/null; then
  if [[ "$(id -u)" != 0 ]]; then
    echo "error: no docker engine reachable (docker info failed), and installing one needs root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends docker.io iptables >&2
fi
ensure_compose

if [[ "$(id -u)" != 0 ]]; then
  echo "error: docker engine not reachable and only root can start dockerd here" >&2
  exit 1
fi

# A stale pid file or socket from a previous session (processes do not survive one).
if [[ -f "$pidfile" ]] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  rm -f "$pidfile" /var/run/docker.sock /var/run/docker.pid
fi
if [[ ! -f "$pidfile" ]]; then
  rm -f /var/run/docker.pid
  mkdir -p "$data_root" "$(dirname "$log")"
  # setsid: the engine outlives the shell (and test process) that started it.
  setsid dockerd --data-root "$data_root" --pidfile /var/run/docker.pid >>"$log" 2>&1 < /dev/null &
  echo $! >"$pidfile"
fi

for _ in $(seq 1 "$timeout"); do
  if engine_up; then
    echo "docker engine: up (dockerd pid $(cat "$pidfile"), data root $data_root, log $log)"
    exit 0
  fi
  if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    rm -f "$pidfile"
    echo "error: dockerd exited; last log lines:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
  sleep 1
done
echo "error: dockerd did not answer within ${timeout}s; last log lines:" >&2
tail -n 30 "$log" >&2
exit 1
