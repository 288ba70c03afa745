#!/usr/bin/env bash
# The Kafka queue against a real Kafka-protocol broker: tansu (a broker that builds from
# crates.io: `cargo install tansu --locked --features dynostore`), its memory storage
# engine, on a loopback listener.
#
#   benches/kafka/tansu-async.sh [DURATION] [CONNECTIONS] [THREADS]   (defaults 10s 64 2)
#
# 1. Starts tansu on 127.0.0.1:$PORT (default 19092) and creates the three topics of
#    `faas up --queue kafka://...` (tansu creates none on its own): faas-async (8
#    partitions), faas-async-activations (8) and faas-async-dead-letters (1).
# 2. Runs `benches/wrk/async.sh` with QUEUE=kafka against it: the same gateway process
#    synchronously at /function/ok (the baseline) and asynchronously at /async-function/ok
#    through `faas up`'s Kafka queue (Kafka publisher and activation store, in-process
#    worker), every 202 after the broker acknowledged the call.
# 3. The broker-restart check (RESTART=0 skips it): a gateway with the Kafka queue runs one
#    async call to the end; tansu is killed (SIGKILL) and started again empty, the topics
#    created again; then an async call is sent every 250 ms until one is accepted (202) and
#    its record reads `succeeded`, without restarting the gateway. Prints how long that took
#    from the moment the topics existed again (target: under 30 s), and what /healthz
#    answered meanwhile.
#
# Needs `tansu`, `wrk`, `curl`. Targets only 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${1:-10s}; CONNS=${2:-64}; THREADS=${3:-2}
PORT=${PORT:-19092}
BROKER=127.0.0.1:$PORT
command -v tansu >/dev/null || {
  echo "tansu is not installed: cargo install tansu --locked --features dynostore" >&2; exit 2; }
LOGDIR=$(mktemp -d)
TANSU=""; GWP=""
cleanup() {
  [ -n "$GWP" ] && kill "$GWP" 2>/dev/null || true
  [ -n "$TANSU" ] && kill "$TANSU" 2>/dev/null || true
  rm -rf "$LOGDIR"
}
trap cleanup EXIT

. benches/kafka/tansu.sh
start_tansu() { tansu_start "$LOGDIR/tansu.log" || exit 1; }

start_tansu
echo "tansu $(tansu --version 2>/dev/null | head -1) on $BROKER (memory storage)"
QUEUE=kafka KAFKA="kafka://$BROKER" benches/wrk/async.sh "$DUR" "$CONNS" "$THREADS"

[ "${RESTART:-1}" = 0 ] && exit 0
echo
echo "== broker killed and restarted empty"
# A fresh broker first: the gateway of the run above was killed without leaving the
# consumer group, and tansu 0.6 does not expire its session (measured 2026-12-06: a new
# member of the group got no partition within 3 minutes), so a new gateway in that group
# would never be given a partition.
kill -KILL "$TANSU"; wait "$TANSU" 2>/dev/null || true
start_tansu
GW=127.0.0.1:18086
BIN="${CARGO_TARGET_DIR:-target}/release"
FAAS_BENCH_QUEUE_KAFKA="kafka://$BROKER" "$BIN/bench-gateway-memory" "$GW" \
  2>"$LOGDIR/gateway.log" & GWP=$!
for _ in $(seq 1 100); do curl -sf -o /dev/null "http://$GW/function/ok" && break; sleep 0.1; done
# One async call to the end: its call id from X-Call-Id, its record at
# /system/activations/{id}.
call() { curl -s -o /dev/null -D - -X POST "http://$GW/async-function/ok" \
  | awk 'tolower($1) == "x-call-id:" {print $2}' | tr -d '\r'; }
state() { curl -s "http://$GW/system/activations/$1" | sed -n 's/.*"state":"\([a-z-]*\)".*/\1/p'; }
succeeded() { # waits (<= 10 s) for call $1 to succeed
  for _ in $(seq 1 40); do [ "$(state "$1")" = succeeded ] && return 0; sleep 0.25; done
  return 1
}
ID=$(call); [ -n "$ID" ] && succeeded "$ID" || { echo "no async call went through before the restart" >&2; exit 1; }
echo "before: call $ID succeeded"
kill -KILL "$TANSU"; wait "$TANSU" 2>/dev/null || true
sleep 2 # the gateway's calls fail meanwhile
echo "broker down: /healthz $(curl -s -o /dev/null -w '%{http_code}' "http://$GW/healthz"), async call: $(curl -s -o /dev/null -m 40 -w '%{http_code} in %{time_total} s' -X POST "http://$GW/async-function/ok" || true)"
start_tansu
T0=$(date +%s.%N)
DONE=""
HEALTH=""
for _ in $(seq 1 240); do # <= 60 s at 250 ms
  HEALTH="$HEALTH $(curl -s -o /dev/null -w '%{http_code}' "http://$GW/healthz")"
  ID=$(curl -s -o /dev/null -D - -m 35 -X POST "http://$GW/async-function/ok" \
    | awk 'tolower($1) == "x-call-id:" {print $2}' | tr -d '\r') || ID=""
  if [ -n "$ID" ] && succeeded "$ID"; then DONE=$(date +%s.%N); break; fi
  sleep 0.25
done
if [ -z "$DONE" ]; then
  echo "after the restart: no async call succeeded within 60 s (target 30 s)"
  echo "gateway log:"; tail -n 20 "$LOGDIR/gateway.log"; exit 1
fi
awk -v a="$T0" -v b="$DONE" 'BEGIN { printf "after the restart: the first async call accepted and succeeded %.1f s after the topics were created again (target < 30 s)\n", b - a }'
echo "/healthz meanwhile:$HEALTH"
