#!/usr/bin/env bash
# Builds the images of the OpenWhisk kinds `python:3` and `nodejs:20` (faas_core::runtimes:
# faas-rs/action-python:3, faas-rs/action-nodejs:20) without a registry: each image is a
# root filesystem assembled here from this machine's own files on an empty (`scratch`)
# base, built with runtimes/python/Dockerfile and runtimes/nodejs/Dockerfile:
#   - busybox-static as /bin/busybox and /bin/sh,
#   - the statically linked faas-watchdog (openwhisk mode) as /usr/bin/faas-watchdog,
#   - our runtime (runtimes/python/runtime.py or runtimes/nodejs/runtime.js) in /runtime,
#   - the interpreter (the real python3, not a pyenv shim; /usr/bin/node) at its own path,
#     the shared libraries it and its extension modules load (from `ldd`) at theirs, and for
#     Python its standard library less what a runtime never imports (tests, the C build
#     config, IDLE, tkinter, lib2to3, ensurepip, byte-code caches, site packages).
# An image whose content (a hash of the staged files, its `faas-rs.content` label) is
# already there is not built again.
#
# Usage: runtimes/build-images.sh WATCHDOG [KIND...]   (KIND: python, nodejs; default both)
#   WATCHDOG: a statically linked faas-watchdog (the Docker tests pass the one
#   faas_backend_docker::testing::static_binaries builds). Environment: PYTHON (the
#   interpreter to copy; default /usr/bin/python3, else the one `python3` on PATH runs),
#   NODE (default /usr/bin/node), BUSYBOX (default /bin/busybox).
set -euo pipefail
cd "$(dirname "$0")/.."
WATCHDOG=${1:?usage: $0 STATIC_WATCHDOG [python] [nodejs]}
shift
KINDS=("$@")
[ ${#KINDS[@]} -gt 0 ] || KINDS=(python nodejs)
BUSYBOX=${BUSYBOX:-/bin/busybox}

die() { echo "!! build-images: $*" >&2; exit 1; }
# A static (or static-pie) binary loads no shared library.
static() { [ -x "$1" ] && ! ldd "$1" 2>/dev/null | grep -q '=>'; }
static "$WATCHDOG" || die "$WATCHDOG is not a statically linked executable"
static "$BUSYBOX" || die "$BUSYBOX is missing or not static (apt-get install busybox-static)"

# Copies FILE into ROOT at its own path, following symlinks.
put() { # ROOT FILE
  mkdir -p "$1$(dirname "$2")"
  cp -L "$2" "$1$2"
}

# Copies the ELF files given and every shared library they load into ROOT.
put_with_libs() { # ROOT FILE...
  local root=$1; shift
  local f lib
  for f in "$@"; do
    put "$root" "$f"
    # `=> /path (addr)` lines and the loader's own `/lib64/ld-linux... (addr)` line.
    for lib in $(ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
      [ -e "$root$lib" ] || put "$root" "$lib"
    done
  done
}

# The skeleton every image shares: busybox, the watchdog, /tmp.
skeleton() { # ROOT
  local root=$1 applet
  mkdir -p "$root/bin" "$root/usr/bin" "$root/runtime" "$root/tmp"
  chmod 1777 "$root/tmp"
  cp "$BUSYBOX" "$root/bin/busybox"
  for applet in sh cat ls env; do ln -s busybox "$root/bin/$applet"; done
  # Its debug symbols are no use in the image.
  strip -o "$root/usr/bin/faas-watchdog" "$WATCHDOG" 2>/dev/null || cp "$WATCHDOG" "$root/usr/bin/faas-watchdog"
}

# Builds IMAGE from DOCKERFILE and the staged ROOT unless an image of that content exists.
build() { # IMAGE DOCKERFILE STAGE
  local image=$1 dockerfile=$2 stage=$3 hash have
  hash=$( (cd "$stage/rootfs" && find . -print0 | LC_ALL=C sort -z | xargs -0 stat -c '%n %a %s %N' &&
    find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum; cat "$OLDPWD/$dockerfile") |
    sha256sum | cut -c1-16)
  have=$(docker image inspect -f '{{ index .Config.Labels "faas-rs.content" }}' "$image" 2>/dev/null || true)
  if [ "$have" = "$hash" ]; then
    echo "== $image is up to date ($hash)"
    return
  fi
  cp "$dockerfile" "$stage/Dockerfile"
  echo "== building $image ($(du -sh "$stage/rootfs" | cut -f1) of files)"
  local out
  if ! out=$(DOCKER_BUILDKIT=0 docker build -q --label "faas-rs.content=$hash" -t "$image" "$stage" 2>&1); then
    echo "$out" >&2
    die "docker build of $image failed"
  fi
  echo "== built $image: $(docker image inspect -f '{{ .Size }}' "$image" | awk '{printf "%.1f MB", $1/1e6}')"
}

STAGES=()
trap 'rm -rf "${STAGES[@]}"' EXIT

python_image() {
  local py stage root stdlib dynload
  py=${PYTHON:-/usr/bin/python3}
  # No system python3: the interpreter that `python3` on PATH really runs (a pyenv shim
  # names it as sys.executable).
  [ -x "$py" ] || py=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null || true)
  py=$(readlink -f "$py")
  case "$py" in */shims/*) die "$py is a pyenv shim: set PYTHON to a real interpreter";; esac
  [ -x "$py" ] || die "no python3 interpreter at $py (set PYTHON)"
  stdlib=$("$py" -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
  dynload=$("$py" -c 'import sys; print(next((p for p in sys.path if p.endswith("lib-dynload")), ""))')
  stage=$(mktemp -d); STAGES+=("$stage"); root=$stage/rootfs
  skeleton "$root"
  put_with_libs "$root" "$py"
  [ -e "$root$(dirname "$py")/python3" ] || ln -s "$(basename "$py")" "$root$(dirname "$py")/python3"
  [ -e "$root/usr/bin/python3" ] || ln -s "$py" "$root/usr/bin/python3"
  mkdir -p "$root$stdlib"
  (cd "$stdlib" && tar -cf - \
    --exclude=__pycache__ --exclude=./test --exclude=./idlelib --exclude=./tkinter \
    --exclude=./turtledemo --exclude=./lib2to3 --exclude=./ensurepip --exclude='./config-*' \
    --exclude=./site-packages --exclude=./dist-packages --exclude=./lib-dynload .) |
    tar -xf - -C "$root$stdlib"
  if [ -n "$dynload" ] && [ -d "$dynload" ]; then
    mkdir -p "$root$dynload"
    put_with_libs "$root" "$dynload"/*.so
  fi
  cp runtimes/python/runtime.py "$root/runtime/runtime.py"
  build faas-rs/action-python:3 runtimes/python/Dockerfile "$stage"
}

node_image() {
  local node stage root
  node=$(readlink -f "${NODE:-/usr/bin/node}")
  [ -x "$node" ] || die "no node at $node (set NODE)"
  stage=$(mktemp -d); STAGES+=("$stage"); root=$stage/rootfs
  skeleton "$root"
  put_with_libs "$root" "$node"
  [ -e "$root/usr/bin/node" ] || ln -s "$node" "$root/usr/bin/node"
  cp runtimes/nodejs/runtime.js "$root/runtime/runtime.js"
  build faas-rs/action-nodejs:20 runtimes/nodejs/Dockerfile "$stage"
}

for k in "${KINDS[@]}"; do
  case "$k" in
    python) python_image ;;
    nodejs) node_image ;;
    *) die "unknown kind $k (python, nodejs)" ;;
  esac
done
