#!/usr/bin/env bash
# The Kafka queue of `faas up` when its broker restarts without its data, on a real
# Kafka-protocol broker: tansu (`cargo install tansu --locked --features dynostore`), memory
# storage, on a loopback listener.
#
#   benches/kafka/tansu-restart.sh [RUNS]      (default 5)
#
# Each run: an empty tansu on 127.0.0.1:$PORT (default 19092) with the three topics of
# `faas up --queue kafka://...`; `faas up -f examples/stack.yml` with that queue; one async
# call to `uppercase` to the end; tansu killed (SIGKILL) and, DOWN seconds later (default
# 2; past the consumer's 6 s session the group takes its partitions back), started again
# empty, the topics created again; then an async call every 250 ms, for at most 60 s,
# until one is accepted and its record reads `succeeded` (the recovery time, from the
# moment the topics existed again); 20 more calls;
# With TOPICS=gateway the script creates no topics: the gateway creates them at its start
# and again after the restart (`keep_topics`), and the recovery time counts from the moment
# tansu listened again.
# 20 s later the state of every call accepted after the restart. A gateway that crashed is
# said so. Prints one line per run.
#
# WORKER=external runs the gateway with `--no-worker` and one `faas-queue-worker` beside it
# (WORKER_BIN, default target/debug/faas-queue-worker: `cargo build -p faas-queue --features
# bin`). CALL_BEFORE=0 makes no call before the restart (the gateway's producer has then
# delivered nothing when the broker loses its state); UP_FOR=S keeps the gateway up S seconds
# before tansu is killed (default 0).
#
# KEEP=DIR keeps the gateway's and tansu's logs of a run that did not recover in DIR/run-N.
# FAAS_BIN: the `faas` binary (default target/debug/faas, built with the `kafka` feature:
# `cargo build -p faas --features kafka`). Needs `tansu`, `curl`, `bc`. Targets only 127.0.0.1.
set -uo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-5}
PORT=${PORT:-19092}; BROKER=127.0.0.1:$PORT; GW=127.0.0.1:${GW_PORT:-18090}
FAAS_BIN=${FAAS_BIN:-target/debug/faas}
command -v tansu >/dev/null || {
  echo "tansu is not installed: cargo install tansu --locked --features dynostore" >&2; exit 2; }
[ -x "$FAAS_BIN" ] || { echo "$FAAS_BIN missing: cargo build -p faas --features kafka" >&2; exit 2; }
WORK=$(mktemp -d)
TANSU=""; GWP=""; WKP=""
WORKER=${WORKER:-in-process}; WORKER_BIN=${WORKER_BIN:-target/debug/faas-queue-worker}
case "$WORKER" in in-process) ;; external)
  [ -x "$WORKER_BIN" ] || { echo "$WORKER_BIN missing: cargo build -p faas-queue --features bin" >&2; exit 2; } ;;
  *) echo "WORKER is in-process or external" >&2; exit 2 ;; esac
stop() {
  [ -n "$WKP" ] && { kill "$WKP" 2>/dev/null; wait "$WKP" 2>/dev/null; }
  [ -n "$GWP" ] && { kill "$GWP" 2>/dev/null; wait "$GWP" 2>/dev/null; }
  [ -n "$TANSU" ] && { kill -9 "$TANSU" 2>/dev/null; wait "$TANSU" 2>/dev/null; }
  GWP=""; TANSU=""; WKP=""
}
trap 'stop; rm -rf "$WORK"' EXIT

. benches/kafka/tansu.sh
TOPICS=${TOPICS:-script}
case "$TOPICS" in script) BARE="" ;; gateway) BARE=bare ;;
  *) echo "TOPICS is script or gateway" >&2; exit 2 ;; esac
start_tansu() { tansu_start "$WORK/tansu.log" $BARE; }
call() { curl -s -o /dev/null -D - -m 35 -X POST -d hello "http://$GW/async-function/uppercase" |
  awk 'tolower($1) == "x-call-id:" {print $2}' | tr -d '\r'; }
state() { curl -s "http://$GW/system/activations/$1" | sed -n 's/.*"state":"\([a-z-]*\)".*/\1/p'; }
succeeded() { for _ in $(seq 1 40); do [ "$(state "$1")" = succeeded ] && return 0; sleep 0.25; done; return 1; }

run() {
  start_tansu || return 1
  rm -rf "$WORK/state"; mkdir -p "$WORK/state"
  local noworker=()
  [ "$WORKER" = external ] && noworker=(--no-worker)
  "$FAAS_BIN" up -f examples/stack.yml --no-auth --listen "$GW" --state-dir "$WORK/state" \
    --queue "kafka://$BROKER" "${noworker[@]}" >"$WORK/gateway.log" 2>&1 & GWP=$!
  for _ in $(seq 1 300); do curl -sf -o /dev/null "http://$GW/healthz" && break; sleep 0.1; done
  if [ "$WORKER" = external ]; then
    "$WORKER_BIN" --brokers "$BROKER" --gateway "http://$GW" >"$WORK/worker.log" 2>&1 & WKP=$!
  fi
  if [ "${CALL_BEFORE:-1}" != 0 ]; then
    local id; id=$(call)
    { [ -n "$id" ] && succeeded "$id"; } || { echo "no async call went through before the restart"; return 1; }
  fi
  sleep "${UP_FOR:-0}"
  kill -9 "$TANSU"; wait "$TANSU" 2>/dev/null; TANSU=""
  sleep "${DOWN:-2}"
  start_tansu || return 1
  local t0 done="" accepted=()
  t0=$(date +%s.%N)
  while [ "$(echo "$(date +%s.%N) - $t0 < 60" | bc)" = 1 ]; do
    kill -0 "$GWP" 2>/dev/null || break
    id=$(call) || id=""
    if [ -n "$id" ]; then accepted+=("$id"); succeeded "$id" && { done=$(date +%s.%N); break; }; fi
    sleep 0.25
  done
  if ! kill -0 "$GWP" 2>/dev/null; then
    wait "$GWP"; echo "the gateway died (exit $?) after the restart; last line: $(tail -n 1 "$WORK/gateway.log")"; return 0
  fi
  if [ -z "$done" ]; then
    echo "no async call succeeded within 60 s; the gateway's last lines:"
    tail -n 8 "$WORK/gateway.log"
    if [ -n "${KEEP:-}" ]; then
      mkdir -p "$KEEP/run-$1" && cp "$WORK"/*.log "$KEEP/run-$1/" &&
        echo "logs kept in $KEEP/run-$1"
    fi
    return 0
  fi
  for _ in $(seq 1 20); do id=$(call); [ -n "$id" ] && accepted+=("$id"); sleep 0.1; done
  sleep 20
  local ok=0 other=""
  for id in "${accepted[@]}"; do
    local s; s=$(state "$id")
    if [ "$s" = succeeded ]; then ok=$((ok + 1)); else other="$other ${s:-none}"; fi
  done
  printf 'recovery %.1f s; accepted after the restart %d, succeeded %d%s; logs read again: %d; producers replaced: %d\n' \
    "$(echo "$done - $t0" | bc)" "${#accepted[@]}" "$ok" "${other:+, not:$other}" \
    "$(grep -c 'reading it again from its beginning' "$WORK/gateway.log")" \
    "$(cat "$WORK"/*.log | grep -c 'replaced it with a new one')"
  if [ -n "$WKP" ] && ! kill -0 "$WKP" 2>/dev/null; then
    wait "$WKP"; echo "  the worker died (exit $?); last line: $(tail -n 1 "$WORK/worker.log")"; WKP=""
  fi
}

for i in $(seq 1 "$RUNS"); do
  printf 'run %d: ' "$i"
  run "$i"
  stop
done
