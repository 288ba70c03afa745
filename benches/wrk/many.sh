#!/usr/bin/env bash
# Many distinct functions through the gateway: one function (`/function/ok`) and then N
# distinct functions `f0` .. `f{N-1}` round robin (`benches/wrk/round-robin.lua`), same wrk
# settings, same run. Also prints the resident memory per idle function.
#
# BACKEND=memory (default): `bench-gateway-memory`, the default gateway on the in-memory
# backend (FAAS_BENCH_FUNCTIONS=N: the functions share one handler); one gateway with only
# `ok` and one with the N besides, to read the memory of the N.
# BACKEND=process: `faas up` (release build) serving a generated stack of N http-mode
# functions plus `ok`, each one replica (`faas-fixture`, a small hyper server, alone: the
# backend relays to an http-mode process itself; HTTP_WATCHDOG=1 puts our watchdog in front
# of each, `faas up --http-watchdog`); the memory is that of the gateway and every
# process it started, per function: resident (RSS, which counts the pages of the binaries
# that every process shares once per process) and proportional (PSS, shared pages split
# between their processes: what the functions take from the machine).
# With `--no-autoscale` (AUTOSCALE=0, the default) every function keeps its one replica in
# both phases, so both measure the request path; AUTOSCALE=1 keeps OpenFaaS CE's rate rule,
# which gives `ok` up to 20 replicas and every function called 5 times a second or more
# (all of them, round robin) new replicas during the run. WATCHDOG=PROGRAM is the replicas'
# watchdog (`faas up --watchdog`; default the standalone `faas-watchdog` beside `faas`;
# empty: `faas watchdog`).
#
#   benches/wrk/many.sh [FUNCTIONS] [DURATION] [CONNECTIONS] [THREADS]   (defaults 1000 10s 64 2)
#
# BENCH_BIN=DIR runs prebuilt release binaries from DIR (no build). Needs `wrk`. Targets
# only 127.0.0.1. Targets (issue #19): round robin >= 0.7x one function on the memory
# backend, >= 0.5x on the process backend.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-1000}; DUR=${2:-10s}; CONNS=${3:-64}; THREADS=${4:-2}
BACKEND=${BACKEND:-memory}
WORK=$(mktemp -d)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
up() { # url: waits until it answers
  for _ in $(seq 1 1200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "not answering: $1" >&2; exit 1
}
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
pss() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup"; }
# The resident memory of a process and its descendants, and how many they are.
tree_rss() {
  local pids
  pids=$(ps -e -o pid=,ppid= | awk -v root="$1" '
    { parent[$1] = $2 } END {
      keep[root] = 1; changed = 1
      while (changed) { changed = 0
        for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } }
      for (p in keep) print p }')
  for p in $pids; do echo "$(rss "$p" 2>/dev/null) $(pss "$p" 2>/dev/null)"; done |
    awk 'NF == 2 { s += $1; q += $2; n++ } END { printf "%d %d %d\n", s, n, q }'
}
case "$BACKEND" in
  memory)
    [ -n "${BENCH_BIN:-}" ] || cargo build --release -q -p faas-benches --bin bench-gateway-memory
    BIN="${BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release}"
    ONE=127.0.0.1:18091; MANY=127.0.0.1:18092
    "$BIN/bench-gateway-memory" "$ONE" 2>/dev/null & PIDS+=($!); P1=$!
    FAAS_BENCH_FUNCTIONS="$N" "$BIN/bench-gateway-memory" "$MANY" 2>/dev/null & PIDS+=($!); P2=$!
    up "http://$ONE/function/ok"; up "http://$MANY/function/f$((N - 1))"
    RSS1=$(rss $P1); RSSN=$(rss $P2)
    MEMORY=$(awk -v r1="$RSS1" -v rn="$RSSN" -v n="$N" 'BEGIN {
      printf "RSS after start: %d KiB with 1 function, %d KiB with %d more: %.1f KiB per idle function", r1, rn, n, (rn - r1) / n }')
    TARGET=70 ;;
  process)
    [ -n "${BENCH_BIN:-}" ] ||
      cargo build --release -q -p faas --bin faas -p faas-watchdog --bin faas-watchdog --bin faas-fixture
    BIN=$(cd "${BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release}" && pwd)
    ONE=127.0.0.1:18093; MANY=$ONE
    {
      echo "version: 1.0"
      echo "provider: {name: openfaas, gateway: http://$ONE}"
      echo "functions:"
      for f in ok $(seq -f 'f%g' 0 $((N - 1))); do
        echo "  $f: {image: faas-rs/fixture, fprocess: $BIN/faas-fixture, environment: {mode: http}}"
      done
    } >"$WORK/stack.yml"
    # Every function keeps its one replica (no scale to zero); the cap leaves room for N + 1.
    FLAGS=()
    [ "${AUTOSCALE:-0}" = 1 ] || FLAGS+=(--no-autoscale)
    [ "${HTTP_WATCHDOG:-0}" = 0 ] || FLAGS+=(--http-watchdog)
    WATCHDOG=${WATCHDOG-$BIN/faas-watchdog}
    [ -z "$WATCHDOG" ] || FLAGS+=(--watchdog "$WATCHDOG")
    "$BIN/faas" up -f "$WORK/stack.yml" --listen "$ONE" --no-auth --state-dir "$WORK/state" \
      --max-replicas-per-node $((2 * N + 16)) "${FLAGS[@]}" >"$WORK/gateway.log" 2>&1 &
    PIDS+=($!); P=$!
    # Each function answered once, then the memory, before any load makes the rate rule
    # (OpenFaaS CE's default) add replicas.
    for f in ok $(seq -f 'f%g' 0 $((N - 1))); do up "http://$ONE/function/$f"; done
    read -r RSS PROCS PSS < <(tree_rss "$P")
    MEMORY=$(awk -v r="$RSS" -v p="$PROCS" -v q="$PSS" -v n="$N" 'BEGIN {
      printf "memory with %d idle functions ready, %d processes: resident %.1f MiB, %.1f KiB per function; proportional %.1f MiB, %.1f KiB per function", n + 1, p, r / 1024, r / (n + 1), q / 1024, q / (n + 1) }')
    TARGET=50 ;;
  *) echo "BACKEND must be memory or process" >&2; exit 2 ;;
esac
wrk -t1 -c8 -d2s "http://$ONE/function/ok" >/dev/null
FUNCTIONS=$N wrk -t1 -c8 -d5s -s benches/wrk/round-robin.lua "http://$MANY" >/dev/null
echo "backend: $BACKEND${FLAGS:+ (faas up ${FLAGS[*]})}; load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
rate() { awk '/Requests\/sec/ {print $2}'; }
ONE_RPS=$(wrk -t"$THREADS" -c"$CONNS" -d"$DUR" "http://$ONE/function/ok" | rate)
OUT=$(FUNCTIONS=$N wrk -t"$THREADS" -c"$CONNS" -d"$DUR" -s benches/wrk/round-robin.lua "http://$MANY")
MANY_RPS=$(rate <<<"$OUT")
NON2XX=$(awk '/Non-2xx/ {print $5}' <<<"$OUT"); NON2XX=${NON2XX:-0}
printf "%-40s %12s\n" "path" "per second"
printf "%-40s %12s\n" "1 function (/function/ok)" "$ONE_RPS"
printf "%-40s %12s\n" "$N functions, round robin" "$MANY_RPS"
echo "non-2xx answers in the round robin: $NON2XX"
awk -v a="$MANY_RPS" -v b="$ONE_RPS" -v t="$TARGET" 'BEGIN { printf "round robin / one: %.1f%% (target >= %d%%)\n", 100 * a / b, t }'
echo "$MEMORY"
