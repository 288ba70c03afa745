#!/usr/bin/env bash
# Gateway overhead benchmark: in one run, a bare hyper server answering `ok` versus the full
# faas-rs gateway invoking an in-memory function answering `ok`. Same wrk settings for all.
# The gateway is served by `faas_http::serve_with` with `ServeConfig::threads` = CPUs (one
# single-threaded runtime per CPU, one buffer per response). Two more rows keep that honest:
# the bare server served the same way (`per-core`), and `faas_http::serve` running a trivial
# service (connection handling without the gateway's own work). A last row runs the gateway
# with basic auth on, as `faas up` has it by default (target: >= 90% of auth off).
#
#   benches/wrk/gateway.sh [DURATION] [CONNECTIONS] [THREADS]     (defaults 10s 64 2)
#
# Needs `wrk`. Targets only 127.0.0.1. Target: gateway >= 70% of bare throughput, p99 <= 2x.
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${1:-10s}; CONNS=${2:-64}; THREADS=${3:-2}
BARE=127.0.0.1:18081; GW=127.0.0.1:18082; SERVE=127.0.0.1:18083; BAREPC=127.0.0.1:18084
GWAUTH=127.0.0.1:18085
cargo build --release -q -p faas-benches --bin bench-bare-hyper --bin bench-gateway-memory --bin bench-serve-ok
BIN="${CARGO_TARGET_DIR:-target}/release"
"$BIN/bench-bare-hyper" "$BARE" 2>/dev/null & P1=$!
"$BIN/bench-bare-hyper" "$BAREPC" per-core 2>/dev/null & P4=$!
"$BIN/bench-gateway-memory" "$GW" 2>/dev/null & P2=$!
"$BIN/bench-serve-ok" "$SERVE" 2>/dev/null & P3=$!
FAAS_BENCH_AUTH=1 "$BIN/bench-gateway-memory" "$GWAUTH" 2>/dev/null & P5=$!
trap 'kill $P1 $P2 $P3 $P4 $P5 2>/dev/null || true' EXIT
for url in "http://$BARE/" "http://$GW/function/ok" "http://$SERVE/" "http://$BAREPC/" "http://$GWAUTH/function/ok"; do
  for _ in $(seq 1 100); do curl -sf -o /dev/null "$url" && break; sleep 0.1; done
done
run() { # url -> "rps p99_ms"
  local out; out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DUR" --latency "$1")
  local rps; rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  local p99; p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' <<<"$out")
  echo "$rps $p99"
}
# Warm up both, then measure.
wrk -t1 -c8 -d2s "http://$BARE/" >/dev/null; wrk -t1 -c8 -d2s "http://$GW/function/ok" >/dev/null
wrk -t1 -c8 -d2s "http://$SERVE/" >/dev/null; wrk -t1 -c8 -d2s "http://$BAREPC/" >/dev/null
wrk -t1 -c8 -d2s "http://$GWAUTH/function/ok" >/dev/null
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
read -r BRPS BP99 < <(run "http://$BARE/")
read -r PRPS PP99 < <(run "http://$BAREPC/")
read -r SRPS SP99 < <(run "http://$SERVE/")
read -r GRPS GP99 < <(run "http://$GW/function/ok")
read -r ARPS AP99 < <(run "http://$GWAUTH/function/ok")
echo "wrk -t$THREADS -c$CONNS -d$DUR --latency"
printf "%-28s %12s %10s\n" "server" "req/s" "p99 ms"
printf "%-28s %12s %10s\n" "bare hyper (ok)" "$BRPS" "$BP99"
printf "%-28s %12s %10s\n" "bare hyper, served as gateway" "$PRPS" "$PP99"
printf "%-28s %12s %10s\n" "faas_http::serve, trivial svc" "$SRPS" "$SP99"
printf "%-28s %12s %10s\n" "gateway -> memory fn (ok)" "$GRPS" "$GP99"
printf "%-28s %12s %10s\n" "same, basic auth on" "$ARPS" "$AP99"
awk -v a="$ARPS" -v b="$BRPS" -v g="$GRPS" -v bp="$BP99" -v gp="$GP99" -v p="$PRPS" -v pp="$PP99" 'BEGIN {
  printf "gateway/bare throughput: %.1f%% (target >= 70%%)\n", 100*g/b;
  printf "gateway/bare p99: %.2fx (target <= 2x)\n", gp/bp;
  printf "gateway/bare-served-as-gateway throughput: %.1f%%, p99 %.2fx\n", 100*g/p, gp/pp;
  printf "gateway auth on/off throughput: %.1f%% (target >= 90%%)\n", 100*a/g }'
