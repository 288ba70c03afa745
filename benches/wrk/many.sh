#!/usr/bin/env bash
# Many distinct functions through the gateway, on the in-memory backend: the same gateway
# process (`bench-gateway-memory` with FAAS_BENCH_FUNCTIONS=N: functions `f0` .. `f{N-1}`
# besides `ok`, one handler) driven by wrk at one function (`/function/ok`) and then round
# robin over the N (`benches/wrk/round-robin.lua`), same wrk settings. Also prints the
# gateway's resident memory with 1 function and with N + 1 (per idle function).
#
#   benches/wrk/many.sh [FUNCTIONS] [DURATION] [CONNECTIONS] [THREADS]   (defaults 1000 10s 64 2)
#
# Needs `wrk`. Targets only 127.0.0.1. Target (issue #19): round robin >= 0.7x one function.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-1000}; DUR=${2:-10s}; CONNS=${3:-64}; THREADS=${4:-2}
ONE=127.0.0.1:18091; MANY=127.0.0.1:18092
cargo build --release -q -p faas-benches --bin bench-gateway-memory
BIN="${BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release}"
"$BIN/bench-gateway-memory" "$ONE" 2>/dev/null & P1=$!
FAAS_BENCH_FUNCTIONS="$N" "$BIN/bench-gateway-memory" "$MANY" 2>/dev/null & P2=$!
trap 'kill $P1 $P2 2>/dev/null || true' EXIT
for url in "http://$ONE/function/ok" "http://$MANY/function/f$((N - 1))"; do
  for _ in $(seq 1 200); do curl -sf -o /dev/null "$url" && break; sleep 0.1; done
done
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
RSS1=$(rss $P1); RSSN=$(rss $P2)
wrk -t1 -c8 -d2s "http://$ONE/function/ok" >/dev/null
FUNCTIONS=$N wrk -t1 -c8 -d2s -s benches/wrk/round-robin.lua "http://$MANY" >/dev/null
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
rate() { awk '/Requests\/sec/ {print $2}'; }
ONE_RPS=$(wrk -t"$THREADS" -c"$CONNS" -d"$DUR" "http://$ONE/function/ok" | rate)
OUT=$(FUNCTIONS=$N wrk -t"$THREADS" -c"$CONNS" -d"$DUR" -s benches/wrk/round-robin.lua "http://$MANY")
MANY_RPS=$(rate <<<"$OUT")
NON2XX=$(awk '/Non-2xx/ {print $5}' <<<"$OUT"); NON2XX=${NON2XX:-0}
printf "%-40s %12s\n" "path" "per second"
printf "%-40s %12s\n" "1 function (/function/ok)" "$ONE_RPS"
printf "%-40s %12s\n" "$N functions, round robin" "$MANY_RPS"
echo "non-2xx answers in the round robin: $NON2XX"
awk -v a="$MANY_RPS" -v b="$ONE_RPS" 'BEGIN { printf "round robin / one: %.1f%% (target >= 70%%)\n", 100 * a / b }'
awk -v r1="$RSS1" -v rn="$RSSN" -v n="$N" 'BEGIN { printf "RSS after start: %d KiB with 1 function, %d KiB with %d more: %.1f KiB per idle function\n", r1, rn, n, (rn - r1) / n }'
