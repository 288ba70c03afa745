#!/usr/bin/env bash
# Lambda mode against http mode, through the gateway on the process backend: one handler
# (`faas_lambda_fns::web`, GET /hello answering `hello, world`) served two ways by
# `lambda-bench-gateway` with REPLICAS replicas each: `lambda`, the `lambda-web` binary on
# the unmodified `lambda_http` crate in the watchdog's `lambda` mode (event in, answer out
# over the Lambda Runtime API, one invocation at a time per runtime), and `http`, the same
# handler behind a plain hyper server in the watchdog's `http` mode. The lambda function has
# `maxConcurrency` ENVS, so each of its replicas runs ENVS execution environments (runtime
# processes, each taking one invocation at a time: `lambda_concurrency`); the same replicas
# and the same machine serve both. Two loads: one connection per replica (one invocation
# per replica at a time), then CONNECTIONS. All warm: the replicas have started and
# answered before the runs. SETUP `default`: both as the process backend runs them by
# default (the http function's process alone, relayed to by the backend; the lambda
# function's runtimes run by the backend, which serves their Runtime API itself); SETUP
# `watchdog`: both behind a watchdog process (the two protocols through one watchdog).
#
#   benches/wrk/lambda.sh [DURATION] [CONNECTIONS] [THREADS] [REPLICAS] [ENVS] [SETUP]
#   (defaults 10s 64 2 2 1 default)
#
# Needs `wrk`. Targets only 127.0.0.1. Target (issue #17): lambda >= 0.7x http throughput.
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${1:-10s}; CONNS=${2:-64}; THREADS=${3:-2}; REPLICAS=${4:-2}; ENVS=${5:-1}; SETUP=${6:-default}
GW=127.0.0.1:18091
nice -n 10 cargo build --release -q -p faas-lambda-fns --bin lambda-bench-gateway --bin lambda-fns-watchdog \
  --bin lambda-web --bin web-http
BIN="${CARGO_TARGET_DIR:-target}/release"
OUT=$(mktemp)
"$BIN/lambda-bench-gateway" "$GW" "$REPLICAS" "$ENVS" "$SETUP" >"$OUT" 2>/dev/null & P=$!
trap 'kill $P 2>/dev/null || true; rm -f "$OUT"' EXIT
for _ in $(seq 1 300); do grep -q ready "$OUT" && break; sleep 0.1; done
grep -q ready "$OUT" || { echo "the bench gateway did not get ready" >&2; exit 1; }
run() { # url conns -> "rps p99_ms requests wrk_cpu_seconds"
  local out
  out=$( { /usr/bin/time -f "WRKCPU %U %S" wrk -t"$THREADS" -c"$2" -d"$DUR" --latency "$1"; } 2>&1)
  local rps; rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  local p99; p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' <<<"$out")
  local bad; bad=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  [ -z "$bad" ] || echo "!! $bad non-2xx answers from $1" >&2
  local n; n=$(awk '/requests in/ {print $1}' <<<"$out")
  local w; w=$(awk '/WRKCPU/ {print $2+$3}' <<<"$out")
  echo "$rps $p99 $n $w"
}
# CPU clock ticks (user+system) of every `lambda-web` runtime process now running.
runtime_ticks() {
  local t=0 p
  for p in $(pgrep -x lambda-web); do
    t=$((t + $(awk '{sub(/.*\) /,""); print $12+$13}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}
# CPU clock ticks (user+system) of the gateway process's own threads (the backend).
gateway_ticks() { awk '{sub(/.*\) /,""); print $12+$13}' "/proc/$P/stat"; }
TCK=$(getconf CLK_TCK)
L="http://$GW/function/lambda/hello"; H="http://$GW/function/http/hello"
wrk -t1 -c"$REPLICAS" -d2s "$L" >/dev/null; wrk -t1 -c"$REPLICAS" -d2s "$H" >/dev/null
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
echo "wrk -t$THREADS -d$DUR --latency; $REPLICAS replica(s) per function; $ENVS execution environment(s) per lambda replica; setup $SETUP"
printf "%-34s %12s %10s\n" "function" "req/s" "p99 ms"
for c in "$REPLICAS" "$CONNS"; do
  t=$THREADS; [ "$c" -lt "$t" ] && t=$c
  T0=$(runtime_ticks); G0=$(gateway_ticks)
  read -r LR LP LN LW < <(THREADS=$t run "$L" "$c")
  T1=$(runtime_ticks); G1=$(gateway_ticks)
  read -r HR HP _ _ < <(THREADS=$t run "$H" "$c")
  printf "%-34s %12s %10s\n" "lambda mode (lambda_http), -c$c" "$LR" "$LP"
  printf "%-34s %12s %10s\n" "http mode (same handler), -c$c" "$HR" "$HP"
  awk -v l="$LR" -v h="$HR" -v c="$c" 'BEGIN { printf "lambda/http throughput at -c%d: %.2fx (target >= 0.7x)\n", c, l/h }'
  # What the unmodified runtimes cost per invocation, against what the whole machine may
  # spend per invocation (runtimes, backend, gateway, wrk) for lambda to reach 0.7x of http.
  awk -v a="$T0" -v b="$T1" -v g0="$G0" -v g1="$G1" -v n="$LN" -v w="$LW" -v tck="$TCK" \
    -v h="$HR" -v cores="$(nproc)" -v c="$c" 'BEGIN {
    printf "  -c%d: CPU per invocation: the lambda_http runtimes %.0f us, the gateway %.0f us, wrk %.0f us; 0.7x of http leaves %.0f us per invocation for all of them\n",
      c, (b - a) / tck * 1e6 / n, (g1 - g0) / tck * 1e6 / n, w * 1e6 / n, cores * 1e6 / (0.7 * h) }'
done
