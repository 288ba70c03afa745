#!/usr/bin/env bash
# Many distinct functions through the gateway, on the process backend: `faas up` (release
# build) serving a generated stack of N http-mode functions `f0` .. `f{N-1}` plus `ok`, each
# one replica (our watchdog in http mode in front of `faas-fixture`, a small hyper server),
# driven by wrk at one function (`/function/ok`) and then round robin over the N
# (`benches/wrk/round-robin.lua`), same wrk settings. Also prints the memory per idle
# function: the resident memory of the gateway and of every process it started (watchdogs
# and their servers), with N + 1 functions ready.
#
#   benches/wrk/many-process.sh [FUNCTIONS] [DURATION] [CONNECTIONS] [THREADS]
#                                                          (defaults 1000 10s 64 2)
#
# Needs `wrk`. Targets only 127.0.0.1. Target (issue #19): round robin >= 0.5x one function.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-1000}; DUR=${2:-10s}; CONNS=${3:-64}; THREADS=${4:-2}
GW=127.0.0.1:18093
if [ -z "${BENCH_BIN:-}" ]; then
  cargo build --release -q -p faas --bin faas -p faas-watchdog --bin faas-watchdog --bin faas-fixture
fi
BIN="${BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release}"
BIN=$(cd "$BIN" && pwd)
WORK=$(mktemp -d)
{
  echo "version: 1.0"
  echo "provider: {name: openfaas, gateway: http://$GW}"
  echo "functions:"
  for f in ok $(seq -f 'f%g' 0 $((N - 1))); do
    echo "  $f: {image: faas-rs/fixture, fprocess: $BIN/faas-fixture, environment: {mode: http}}"
  done
} >"$WORK/stack.yml"
# Every function keeps its one replica (no scale to zero); the caps leave room for N + 1.
"$BIN/faas" up -f "$WORK/stack.yml" --listen "$GW" --no-auth --state-dir "$WORK/state" \
  --max-replicas-per-node $((2 * N + 16)) >"$WORK/gateway.log" 2>&1 & P=$!
trap 'kill $P 2>/dev/null || true; wait $P 2>/dev/null || true; rm -rf "$WORK"' EXIT
ready() { curl -sf -o /dev/null "http://$GW/function/$1"; }
for f in ok "f$((N - 1))" f0; do
  for _ in $(seq 1 1200); do ready "$f" && break; sleep 0.1; done
  ready "$f" || { echo "function $f never answered" >&2; tail -20 "$WORK/gateway.log" >&2; exit 1; }
done
# Memory of the gateway and its whole process tree (watchdogs and their servers).
tree_rss() {
  local pids
  pids=$(ps -e -o pid=,ppid= | awk -v root="$1" '
    { parent[$1] = $2 } END {
      keep[root] = 1; changed = 1
      while (changed) { changed = 0
        for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } }
      for (p in keep) print p }')
  for p in $pids; do awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null; done |
    awk '{ s += $1; n++ } END { printf "%d %d\n", s, n }'
}
wrk -t1 -c8 -d2s "http://$GW/function/ok" >/dev/null
FUNCTIONS=$N wrk -t1 -c8 -d5s -s benches/wrk/round-robin.lua "http://$GW" >/dev/null
read -r RSS PROCS < <(tree_rss "$P")
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
rate() { awk '/Requests\/sec/ {print $2}'; }
ONE_RPS=$(wrk -t"$THREADS" -c"$CONNS" -d"$DUR" "http://$GW/function/ok" | rate)
OUT=$(FUNCTIONS=$N wrk -t"$THREADS" -c"$CONNS" -d"$DUR" -s benches/wrk/round-robin.lua "http://$GW")
MANY_RPS=$(rate <<<"$OUT")
NON2XX=$(awk '/Non-2xx/ {print $5}' <<<"$OUT"); NON2XX=${NON2XX:-0}
printf "%-40s %12s\n" "path" "per second"
printf "%-40s %12s\n" "1 function (/function/ok)" "$ONE_RPS"
printf "%-40s %12s\n" "$N functions, round robin" "$MANY_RPS"
echo "non-2xx answers in the round robin: $NON2XX"
awk -v a="$MANY_RPS" -v b="$ONE_RPS" 'BEGIN { printf "round robin / one: %.1f%% (target >= 50%%)\n", 100 * a / b }'
awk -v r="$RSS" -v p="$PROCS" -v n="$N" 'BEGIN {
  printf "resident memory with %d functions ready: %.1f MiB in %d processes, %.1f KiB per function\n", n + 1, r / 1024, p, r / (n + 1) }'
