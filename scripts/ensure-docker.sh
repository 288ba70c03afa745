#!/usr/bin/env bash
# Makes a Docker engine usable for the Docker tests, idempotently:
#   1. installs Debian's docker.io when `docker`/`dockerd` are missing (as root, via apt-get),
#   2. installs busybox-static when /bin/busybox is missing or not static (test images are
#      built from it: no registry is reachable),
#   3. starts dockerd in the background when the engine does not answer,
#   4. waits (bounded, DOCKER_WAIT_SECS, default 60) until `docker info` answers.
# Exits 0 when the engine answers, 1 otherwise (CI or not: the Docker tests never skip, so
# without an engine they fail).
#
# Usage: bash scripts/ensure-docker.sh      (scripts/test.sh calls it before the tests)
set -uo pipefail

wait_secs="${DOCKER_WAIT_SECS:-60}"
log="${DOCKERD_LOG:-/tmp/faas-rs-dockerd.log}"

fail() {
  echo "!! ensure-docker: $*" >&2
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
  if [ -z "$apt_updated" ]; then
    as_root apt-get update -qq || return 1
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

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

if docker info >/dev/null 2>&1; then
  echo "== ensure-docker: engine answers ($(docker version --format '{{.Server.Version}} API {{.Server.APIVersion}}' 2>/dev/null))"
  exit 0
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
  echo "== ensure-docker: starting dockerd (log: $log)"
  # setsid + nohup: dockerd outlives this script and the CI step that ran it.
  as_root setsid nohup dockerd >"$log" 2>&1 </dev/null &
fi

for _ in $(seq 1 "$wait_secs"); do
  if docker info >/dev/null 2>&1; then
    echo "== ensure-docker: engine answers ($(docker version --format '{{.Server.Version}} API {{.Server.APIVersion}}' 2>/dev/null))"
    exit 0
  fi
  sleep 1
done
fail "dockerd did not answer within ${wait_secs}s"
