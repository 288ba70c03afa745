#!/usr/bin/env bash
# Machine CPU per call, sync and async, on the gateway of `benches/wrk/async.sh`
# (`bench-gateway-memory`): busy CPU time of the whole machine (from /proc/stat, wrk
# included) divided by the calls completed (sync: wrk's responses; async: the calls the
# worker finished, counted until the queue drained), and the share of CPU time idle. On a
# VM whose speed drifts from minute to minute this reads steadier than the throughput
# ratio, and it shows what a change costs or saves per call.
#
#   benches/wrk/async-cpu.sh [DURATION] [CONNECTIONS] [THREADS]     (defaults 10s 64 2)
#
# QUEUE=durable (the default: `faas up`'s queue, in a fresh temporary directory) or
# QUEUE=memory. SKIP_BUILD=1 uses the binary in ${CARGO_TARGET_DIR:-target}/release as it
# is. Needs `wrk` and `bc`. Targets only 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${1:-10s}; CONNS=${2:-64}; THREADS=${3:-2}
GW=127.0.0.1:18086
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p faas-benches --bin bench-gateway-memory
BIN="${CARGO_TARGET_DIR:-target}/release/bench-gateway-memory"
QDIR=$(mktemp -d); STATS=$(mktemp); P=
trap '[ -n "$P" ] && kill $P 2>/dev/null && wait $P; rm -rf "$QDIR" "$STATS"' EXIT
case "${QUEUE:-durable}" in
  durable) export FAAS_BENCH_QUEUE_DIR="$QDIR" ;;
  memory) unset FAAS_BENCH_QUEUE_DIR ;;
  *) echo "QUEUE must be durable or memory" >&2; exit 2 ;;
esac
unset FAAS_BENCH_QUEUE_STORE FAAS_BENCH_QUEUE_KAFKA
finished() { tail -n 2 "$STATS" | head -n 1 | awk '{print $2}'; }
cpu() { head -1 /proc/stat | awk '{print $2+$3+$4+$7+$8+$9, $5+$6}'; } # busy idle (ticks)
run() { # PATH -> one line of figures
  local path=$1 b0 i0 b1 i1 f0 f1 prev out calls
  wrk -t1 -c8 -d2s "http://$GW$path" >/dev/null
  for _ in $(seq 1 100); do f0=$(finished); [ "$f0" = "${prev:-}" ] && break; prev=$f0; sleep 0.2; done
  read -r b0 i0 < <(cpu)
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DUR" "http://$GW$path")
  if [ "$path" != /function/ok ]; then # until the worker has finished every accepted call
    prev=""; for _ in $(seq 1 600); do f1=$(finished); [ "$f1" = "$prev" ] && break; prev=$f1; sleep 0.2; done
  fi
  read -r b1 i1 < <(cpu)
  if [ "$path" = /function/ok ]; then calls=$(awk '/requests in/ {print $1}' <<<"$out")
  else calls=$((f1 - f0)); fi
  printf "%-20s %10s/s  calls %8d  busy %6s us/call  idle %5s %%\n" "$path" \
    "$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")" "$calls" \
    "$(echo "scale=1; ($b1 - $b0) * 1000000 / $(getconf CLK_TCK) / $calls" | bc)" \
    "$(echo "scale=1; 100 * ($i1 - $i0) / ($b1 - $b0 + $i1 - $i0)" | bc)"
}
"$BIN" "$GW" "$STATS" 2>/dev/null & P=$!
up=0
for _ in $(seq 1 100); do curl -sf -o /dev/null "http://$GW/function/ok" && up=1 && break; sleep 0.1; done
[ "$up" = 1 ] || { echo "the gateway did not answer on $GW" >&2; exit 1; }
echo "queue: ${QUEUE:-durable}; wrk -t$THREADS -c$CONNS -d$DUR; $(nproc) cores; load $(cut -d' ' -f1 /proc/loadavg)"
run /function/ok
run /async-function/ok
