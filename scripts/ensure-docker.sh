#!/usr/bin/env bash
# Makes a Docker engine usable for the Docker tests, idempotently:
#   1. installs Debian's docker.io when `docker`/`dockerd` are missing (as root, via apt-get),
#   2. installs busybox-static when /bin/busybox is missing or not static (test images are
#      built from it: no registry is reachable),
#   3. starts dockerd in the background when the engine does not answer, and starts it again
#      (up to DOCKERD_STARTS times, default 3) when it exits before answering,
#   4. waits (bounded, DOCKER_WAIT_SECS per start, default 90) until `docker info` answers.
# apt-get is retried (a registry mirror can fail a request). Exits 0 when the engine answers,
# 1 otherwise (CI or not: the Docker tests never skip, so without an engine they fail). The
# outcome is written to $ENSURE_DOCKER_STATUS (default /tmp/faas-rs-ensure-docker.status), which
# a failing Docker test prints with the tail of the dockerd log, so a CI log says why.
#
# Usage: bash scripts/ensure-docker.sh      (scripts/test.sh calls it before the tests)
set -uo pipefail

wait_secs="${DOCKER_WAIT_SECS:-90}"
starts="${DOCKERD_STARTS:-3}"
log="${DOCKERD_LOG:-/tmp/faas-rs-dockerd.log}"
status="${ENSURE_DOCKER_STATUS:-/tmp/faas-rs-ensure-docker.status}"

note() { echo "$(date -u +%H:%M:%S) $*" >>"$status"; }

fail() {
  echo "!! ensure-docker: $*" >&2
  note "FAILED: $*"
  [ -f "$log" ] && { echo "--- last lines of $log" >&2; tail -n 30 "$log" >&2; }
  echo "!! ensure-docker: the Docker tests will FAIL" >&2
  exit 1
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else return 1; fi
}

apt_updated=
apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  local try
  for try in 1 2 3; do
    if [ -z "$apt_updated" ]; then
      as_root apt-get update -qq && apt_updated=1
    fi
    if [ -n "$apt_updated" ] &&
      DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null; then
      return 0
    fi
    note "apt-get install $* failed (try $try)"
    apt_updated=
    sleep $((try * 5))
  done
  return 1
}

answers() { docker info >/dev/null 2>&1; }
engine_version() { docker version --format '{{.Server.Version}} API {{.Server.APIVersion}}' 2>/dev/null; }

if ! command -v docker >/dev/null 2>&1 || ! command -v dockerd >/dev/null 2>&1; then
  echo "== ensure-docker: installing docker.io"
  apt_install docker.io || fail "could not install docker.io"
fi

# A dynamically linked busybox cannot run in a FROM-scratch image.
bb_ldd="$(LC_ALL=C ldd /bin/busybox 2>&1 || true)"
if [ ! -x /bin/busybox ] || [[ "$bb_ldd" != *"not a dynamic"* ]]; then
  echo "== ensure-docker: installing busybox-static"
  apt_install busybox-static || fail "could not install busybox-static"
fi

if answers; then
  echo "== ensure-docker: engine answers ($(engine_version))"
  note "engine answers ($(engine_version))"
  exit 0
fi

for start in $(seq 1 "$starts"); do
  if ! pgrep -x dockerd >/dev/null 2>&1; then
    # A pid file left by a dockerd that died makes the next one refuse to start.
    as_root rm -f /var/run/docker.pid
    echo "== ensure-docker: starting dockerd, start $start of $starts (log: $log)"
    note "starting dockerd (start $start)"
    # setsid + nohup: dockerd outlives this script and the CI step that ran it. The log is
    # appended to, so an earlier start's last words stay readable.
    as_root setsid nohup dockerd >>"$log" 2>&1 </dev/null &
  fi
  for waited in $(seq 1 "$wait_secs"); do
    if answers; then
      echo "== ensure-docker: engine answers ($(engine_version))"
      note "engine answers ($(engine_version)) after start $start"
      exit 0
    fi
    # dockerd exited before answering (given a few seconds to appear at all): start it again
    # rather than wait out the bound.
    [ "$waited" -lt 5 ] || pgrep -x dockerd >/dev/null 2>&1 || break
    sleep 1
  done
  note "dockerd did not answer (start $start); running: $(pgrep -x dockerd >/dev/null && echo yes || echo no)"
  tail -n 5 "$log" >>"$status" 2>/dev/null
  # A dockerd that runs but never answers is stopped (bounded) so the next start is a new one.
  if pgrep -x dockerd >/dev/null 2>&1; then
    as_root pkill -x dockerd
    for _ in $(seq 1 20); do pgrep -x dockerd >/dev/null 2>&1 || break; sleep 0.5; done
    pgrep -x dockerd >/dev/null 2>&1 && as_root pkill -9 -x dockerd
  fi
done
fail "dockerd did not answer after $starts starts of up to ${wait_secs}s each"
