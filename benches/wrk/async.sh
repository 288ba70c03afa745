#!/usr/bin/env bash
# Async end-to-end benchmark over HTTP: the same gateway process (`bench-gateway-memory`:
# the default gateway on an in-memory function `ok`, with its default in-memory queue and
# in-process worker) driven by wrk, synchronously at /function/ok and asynchronously at
# /async-function/ok. The sync rate is wrk's completed requests per second. The async rate
# counts invocations the worker *finished*: from the start of the wrk run to the moment
# the last accepted one finished (the queue drained), read from the worker's counters.
#
#   benches/wrk/async.sh [DURATION] [CONNECTIONS] [THREADS]     (defaults 10s 64 2)
#
# QUEUE=durable (the default) measures `faas up`'s default queue: every accepted call on
# disk (the append-only log of faas up, in a fresh temporary directory) before its 202,
# with group commit; QUEUE=redb the same queue in a redb file (as it was kept before it
# had its own log); QUEUE=memory the in-memory queue; QUEUE=kafka KAFKA=kafka://HOST:PORT
# `faas up --queue kafka://HOST:PORT`'s queue on that broker, with its Kafka activation
# store and in-process worker (the topics faas-async, faas-async-activations and
# faas-async-dead-letters must exist; `benches/kafka/tansu-async.sh` runs it on tansu);
# KAFKA=mock the same on librdkafka's mock cluster in the gateway's process.
#
# Needs `wrk`. Targets only 127.0.0.1. Target (issue #6): async >= 50% of the sync rate.
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${1:-10s}; CONNS=${2:-64}; THREADS=${3:-2}
GW=127.0.0.1:18085
cargo build --release -q -p faas-benches --bin bench-gateway-memory
BIN="${CARGO_TARGET_DIR:-target}/release"
STATS=$(mktemp); : >"$STATS"
QDIR=$(mktemp -d)
unset FAAS_BENCH_QUEUE_KAFKA
case "${QUEUE:-durable}" in
  durable) export FAAS_BENCH_QUEUE_DIR="$QDIR"; unset FAAS_BENCH_QUEUE_STORE ;;
  redb) export FAAS_BENCH_QUEUE_DIR="$QDIR" FAAS_BENCH_QUEUE_STORE=redb ;;
  memory) unset FAAS_BENCH_QUEUE_DIR ;;
  kafka)
    unset FAAS_BENCH_QUEUE_DIR
    export FAAS_BENCH_QUEUE_KAFKA="${KAFKA:?QUEUE=kafka needs KAFKA=kafka://HOST:PORT}" ;;
  *) echo "QUEUE must be durable, redb, memory or kafka" >&2; exit 2 ;;
esac
"$BIN/bench-gateway-memory" "$GW" "$STATS" 2>/dev/null & P=$!
trap 'kill $P 2>/dev/null || true; rm -f "$STATS"; rm -rf "$QDIR"' EXIT
for _ in $(seq 1 100); do curl -sf -o /dev/null "http://$GW/function/ok" && break; sleep 0.1; done
last() { tail -n 2 "$STATS" | head -n 1; } # a complete line: "<ms> <finished> <received>"
drain() { # waits until every received delivery finished and nothing came for 1 s (<= 120 s)
  local prev="" same=0
  for _ in $(seq 1 1200); do
    read -r _ f r < <(last)
    if [ "$f" = "$r" ] && [ "$f" = "$prev" ]; then same=$((same + 1)); else same=0; fi
    [ "$same" -ge 10 ] && return 0
    prev=$f; sleep 0.1
  done
  echo "the async queue did not drain" >&2; return 1
}
# Warm up both paths.
wrk -t1 -c8 -d2s "http://$GW/function/ok" >/dev/null
wrk -t1 -c8 -d2s "http://$GW/async-function/ok" >/dev/null
drain
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
echo "queue: ${QUEUE:-durable}; wrk -t$THREADS -c$CONNS -d$DUR"
SYNC=$(wrk -t"$THREADS" -c"$CONNS" -d"$DUR" "http://$GW/function/ok" | awk '/Requests\/sec/ {print $2}')
drain
read -r T0 F0 _ < <(last)
OUT=$(wrk -t"$THREADS" -c"$CONNS" -d"$DUR" "http://$GW/async-function/ok")
drain
read -r _ F1 _ < <(last)
# The first sample that shows the final count: when the last invocation finished.
T1=$(awk -v f="$F1" '$2 == f {print $1; exit}' "$STATS")
ACC=$(awk '/Requests\/sec/ {print $2}' <<<"$OUT")
REJ=$(awk '/Non-2xx/ {print $5}' <<<"$OUT"); REJ=${REJ:-0}
printf "%-44s %12s\n" "path" "per second"
printf "%-44s %12s\n" "sync  GET /function/ok (completed)" "$SYNC"
printf "%-44s %12s\n" "async GET /async-function/ok (answered)" "$ACC"
awk -v f0="$F0" -v f1="$F1" -v t0="$T0" -v t1="$T1" -v s="$SYNC" -v rej="$REJ" 'BEGIN {
  rate = (f1 - f0) / ((t1 - t0) / 1000);
  printf "%-44s %12.0f\n", "async finished by the worker (end to end)", rate;
  printf "finished %d in %.2f s; refused (queue full): %s\n", f1 - f0, (t1 - t0) / 1000, rej;
  printf "async end to end / sync: %.1f%% (target >= 50%%)\n", 100 * rate / s }'
