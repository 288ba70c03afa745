#!/usr/bin/env bash
# Watchdog throughput: (a) fork mode with `cat`, (b) http mode in front of a trivial
# upstream, (c) that upstream alone (the baseline), all in one run, with the same wrk
# settings (a small POST). Everything listens on 127.0.0.1 only.
#
# Usage: benches/wrk/watchdog.sh [duration] [connections] [threads]
#        (defaults 10s 32 2; needs `wrk` from Debian: apt-get install wrk)
# Env:   CARGO_TARGET_DIR (default target), SKIP_BUILD=1 to use existing release binaries.
set -euo pipefail

DURATION=${1:-10s}
CONNS=${2:-32}
THREADS=${3:-2}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  (cd "$ROOT" && cargo build --release -p faas-watchdog --bins)
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body   = "hello, watchdog"
wrk.headers["Content-Type"] = "text/plain"
LUA

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_ok() { # url
  for _ in $(seq 1 300); do
    if curl -fsS -o /dev/null -X POST --data x "$1" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "not answering: $1" >&2; exit 1
}

run() { # label url
  local out
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$WORK/post.lua" "$2")
  local rps p50 p99 errs
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errs=$(grep -E 'Non-2xx|Socket errors' <<<"$out" | tr '\n' ' ' || true)
  printf '| %s | %s | %s | %s | %s |\n' "$1" "$rps" "$p50" "$p99" "${errs:-none}"
}

UP=$(free_port); WD_HTTP=$(free_port); WD_FORK=$(free_port); WD_FORK2=$(free_port)

# (c) the bare upstream: faas-fixture (a hyper server) echoing the body.
port=$UP FIXTURE_BEHAVIOUR=echo "$BIN/faas-fixture" >/dev/null 2>&1 &
PIDS+=($!)
# (b) the watchdog in http mode in front of its own fixture (it starts the fixture itself).
UP2=$(free_port)
env mode=http fprocess="$BIN/faas-fixture" upstream_url="http://127.0.0.1:$UP2" \
  FIXTURE_BEHAVIOUR=echo port=$WD_HTTP bind_address=127.0.0.1 prefix_logs=false \
  "$BIN/faas-watchdog" >/dev/null 2>&1 &
PIDS+=($!)
# (a) the watchdog in fork (streaming) mode with cat.
env mode=streaming fprocess=cat port=$WD_FORK bind_address=127.0.0.1 \
  "$BIN/faas-watchdog" >/dev/null 2>&1 &
PIDS+=($!)
# (a2) the same with prefix_logs=false (stderr inherited: no pipe, no log task).
env mode=streaming fprocess=cat prefix_logs=false port=$WD_FORK2 bind_address=127.0.0.1 \
  "$BIN/faas-watchdog" >/dev/null 2>&1 &
PIDS+=($!)

wait_ok "http://127.0.0.1:$UP/"
wait_ok "http://127.0.0.1:$WD_HTTP/"
wait_ok "http://127.0.0.1:$WD_FORK/"
wait_ok "http://127.0.0.1:$WD_FORK2/"

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
echo "wrk -t$THREADS -c$CONNS -d$DURATION --latency -s post.lua (POST, 15-byte body)"
echo
echo "| what | req/s | p50 | p99 | errors |"
echo "|---|---|---|---|---|"
run "(a) fork mode, fprocess=cat" "http://127.0.0.1:$WD_FORK/"
run "(a2) fork mode, fprocess=cat, prefix_logs=false" "http://127.0.0.1:$WD_FORK2/"
run "(b) http mode -> faas-fixture" "http://127.0.0.1:$WD_HTTP/"
run "(c) faas-fixture alone (baseline)" "http://127.0.0.1:$UP/"
