#!/usr/bin/env bash
# `faas up`'s Kafka queue on a real Kafka-protocol broker (tansu, memory storage, loopback),
# measured as issue #19 does: one http-mode function (`faas-fixture`, one replica on the
# process backend) called synchronously at /function/ok (the baseline), then
# asynchronously at /async-function/ok with the gateway's in-process worker, every 202
# after the broker acknowledged the call and its `queued` record; the async rate is the
# calls the worker finished (the gateway's `gateway_function_invocation_total` for `ok`),
# from the start of the run until the last accepted one finished. Then the accepting side
# alone: a gateway started with `--no-worker` (its workers elsewhere, e.g.
# `faas-queue-worker`), accepted calls per second and CPU per accepted call of the gateway
# and of tansu. Each phase on a fresh broker (tansu keeps a killed gateway's consumer in
# its group).
#
#   benches/kafka/tansu-up.sh [DURATION] [CONNECTIONS...]   (defaults 10s 64 256 1024)
#
# More connections let the gateway's producer put more calls in each request to the broker
# (it waits at most 1 ms to fill one): 1024 is where the accepting side was measured at
# 20k/s and more with its worker on the same two cores (BENCHMARKS.md, 2026-12-07).
# wrk's socket errors and non-2xx answers are printed (`!!`) when there are any.
#
# BENCH_BIN=DIR runs prebuilt release binaries (`faas` built with `--features kafka`,
# `faas-fixture`) from DIR; otherwise they are built. LINGER=MS sets the producers'
# `linger.ms` (`--kafka-property`; the queue's default is 1). Needs `tansu` (`cargo install
# tansu --locked --features dynostore`), `wrk`, `curl`. Targets only 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${1:-10s}; shift || true
CONNS=("$@"); [ ${#CONNS[@]} -gt 0 ] || CONNS=(64 256 1024)
PORT=${PORT:-19092}
BROKER=127.0.0.1:$PORT
GW=127.0.0.1:18088
command -v tansu >/dev/null || {
  echo "tansu is not installed: cargo install tansu --locked --features dynostore" >&2; exit 2; }
if [ -z "${BENCH_BIN:-}" ]; then
  cargo build --release -q -p faas --features kafka --bin faas
  cargo build --release -q -p faas-watchdog --bin faas-fixture
fi
BIN=$(cd "${BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release}" && pwd)
WORK=$(mktemp -d)
TANSU=""; GWP=""
stop() {
  [ -n "$GWP" ] && { kill "$GWP" 2>/dev/null || true; wait "$GWP" 2>/dev/null || true; }
  [ -n "$TANSU" ] && { kill "$TANSU" 2>/dev/null || true; wait "$TANSU" 2>/dev/null || true; }
  GWP=""; TANSU=""
}
trap 'stop; rm -rf "$WORK"' EXIT
. benches/kafka/tansu.sh
cat >"$WORK/stack.yml" <<EOF
version: 1.0
provider: {name: openfaas, gateway: http://$GW}
functions:
  ok: {image: faas-rs/fixture, fprocess: $BIN/faas-fixture, environment: {mode: http}}
EOF

start() { # [faas up args...]: an empty broker, its topics, a gateway on it
  tansu_start "$WORK/tansu.log" || exit 1
  rm -rf "$WORK/state"
  "$BIN/faas" up -f "$WORK/stack.yml" --listen "$GW" --no-auth --no-autoscale \
    --state-dir "$WORK/state" --queue "kafka://$BROKER" \
    --kafka-property "linger.ms=${LINGER:-1}" "$@" >"$WORK/gateway.log" 2>&1 &
  GWP=$!
  for _ in $(seq 1 100); do curl -sf -o /dev/null "http://$GW/function/ok" && break; sleep 0.1; done
  curl -sf -o /dev/null "http://$GW/function/ok" || {
    echo "the gateway did not answer"; tail -n 20 "$WORK/gateway.log"; exit 1; } >&2
  wrk -t1 -c8 -d2s "http://$GW/function/ok" >/dev/null
  wrk -t1 -c8 -d2s "http://$GW/async-function/ok" >/dev/null
}
finished() { # the calls of `ok` answered 200 so far, sync and async
  curl -s "http://$GW/metrics" |
    awk '/^gateway_function_invocation_total\{/ && /function_name="ok/ && /code="200"/ {s += $2}
         END {printf "%d\n", s}'
}
ticks() { awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }
field() { awk -v k="$1" '$0 ~ k {print $2; exit}'; }

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
echo "tansu $(tansu --version 2>/dev/null | head -1) on $BROKER (memory storage); linger.ms ${LINGER:-1}; wrk -t2 -d$DUR"
printf "%-6s %10s %12s %12s %8s | %14s %9s %9s\n" conns "sync/s" "accepted/s" "finished/s" "e2e/sync" \
  "accepted alone" "gw us" "tansu us"
TCK=$(getconf CLK_TCK)
for c in "${CONNS[@]}"; do
  start
  SYNC=$(wrk -t2 -c"$c" -d"$DUR" "http://$GW/function/ok" | field Requests/sec)
  for _ in $(seq 1 50); do # the warm-up's calls finished (<= 5 s)
    a=$(finished); sleep 0.1; [ "$a" = "$(finished)" ] && break
  done
  F0=$(finished); T0=$(date +%s.%N)
  OUT=$(wrk -t2 -c"$c" -d"$DUR" --latency "http://$GW/async-function/ok")
  LAT="202s with the worker: p50 $(awk '$1=="50%" {print $2}' <<<"$OUT"), p99 $(awk '$1=="99%" {print $2}' <<<"$OUT")"
  N=$(awk '/requests in/ {print $1}' <<<"$OUT"); ACC=$(field Requests/sec <<<"$OUT")
  BAD=$(awk '/Non-2xx/ {print $5}' <<<"$OUT")
  [ -z "$BAD" ] || echo "!! $BAD non-2xx answers" >&2
  SOCK=$(grep 'Socket errors' <<<"$OUT" || true)
  [ -z "$SOCK" ] || echo "!! c$c async:$SOCK" >&2
  T1=""
  for _ in $(seq 1 1200); do # <= 120 s for the backlog
    F1=$(finished); [ $((F1 - F0)) -ge "$N" ] && { T1=$(date +%s.%N); break; }; sleep 0.1
  done
  [ -n "$T1" ] || { echo "!! $((F1 - F0)) of $N accepted calls finished within 120 s" >&2; T1=0; }
  RATE=$(awk -v n="$N" -v a="$T0" -v b="$T1" 'BEGIN {printf "%.0f", (b > 0) ? n / (b - a) : 0}')
  stop
  start --no-worker
  G0=$(ticks "$GWP"); B0=$(ticks "$TANSU")
  OUT=$(wrk -t2 -c"$c" -d"$DUR" "http://$GW/async-function/ok")
  G1=$(ticks "$GWP"); B1=$(ticks "$TANSU")
  NA=$(awk '/requests in/ {print $1}' <<<"$OUT"); ALONE=$(field Requests/sec <<<"$OUT")
  SOCK=$(grep -E 'Socket errors|Non-2xx' <<<"$OUT" || true)
  [ -z "$SOCK" ] || echo "!! c$c accepting alone: $SOCK" >&2
  stop
  awk -v c="$c" -v s="$SYNC" -v a="$ACC" -v r="$RATE" -v al="$ALONE" -v n="$NA" -v k="$TCK" \
    -v g="$((G1 - G0))" -v b="$((B1 - B0))" 'BEGIN {
    printf "%-6s %10.0f %12.0f %12.0f %7.2fx | %14.0f %9.1f %9.1f\n", "c" c, s, a, r, r / s, al,
      g / k * 1e6 / n, b / k * 1e6 / n }'
  echo "       $LAT"
done
echo "targets (#19): accepted >= 20k/s; finished end to end >= 0.3x of sync"
