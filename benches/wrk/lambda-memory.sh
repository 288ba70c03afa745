#!/usr/bin/env bash
# Memory per idle Lambda function on the process backend: `faas up` (release build) serving
# a generated stack of N `lambda`-mode functions (`lambda-echo`, a function on the unmodified
# `lambda_runtime` crate), each one replica with one execution environment, plus a fork-mode
# `ok`; every function called once, then idle. Prints the processes of the gateway's tree
# and their resident (RSS) and proportional (PSS: shared pages split between processes)
# memory. Run it with N=0 and N, with and without FLAGS=--lambda-watchdog (each replica
# behind a watchdog process instead of its runtime alone, run by the backend): per function
# = (N's figure - 0's) / N.
#
#   FLAGS=... benches/wrk/lambda-memory.sh [N]   (default 100)
#
# BENCH_BIN=DIR runs prebuilt release binaries from DIR (`faas`, `faas-watchdog`,
# `lambda-echo`; no build). Targets only 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-100}
if [ -z "${BENCH_BIN:-}" ]; then
  cargo build --release -q -p faas -p faas-watchdog --bins -p faas-lambda-fns --bin lambda-echo
fi
B="${BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release}"
W=$(mktemp -d); GW=127.0.0.1:18121
P=""
trap '[ -z "$P" ] || kill "$P" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"' EXIT
{
  echo "version: 1.0"; echo "provider: {name: openfaas, gateway: http://$GW}"; echo "functions:"
  echo "  ok: {image: x/ok, fprocess: cat}"
  for i in $(seq 0 $((N - 1))); do
    echo "  l$i: {image: x/l, fprocess: $B/lambda-echo, environment: {mode: lambda}}"
  done
} >"$W/stack.yml"
# shellcheck disable=SC2086 # FLAGS is a list of flags
"$B/faas" up -f "$W/stack.yml" --listen "$GW" --no-auth --no-autoscale --state-dir "$W/state" \
  ${FLAGS:-} >"$W/log" 2>&1 & P=$!
answer() { # url
  for _ in $(seq 1 600); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "not answering: $1" >&2; exit 1
}
answer "http://$GW/function/ok"
for i in $(seq 0 $((N - 1))); do answer "http://$GW/function/l$i/x"; done
pids=$(ps -e -o pid=,ppid= | awk -v root="$P" '
  { parent[$1] = $2 } END {
    keep[root] = 1; changed = 1
    while (changed) { changed = 0
      for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } }
    for (p in keep) print p }')
for p in $pids; do
  echo "$(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null) $(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null)"
done | awk -v n="$N" -v f="${FLAGS:-}" 'NF == 2 { s += $1; q += $2; c++ }
  END { printf "%d lambda functions %s: %d processes, RSS %d KiB, PSS %d KiB\n", n, f, c, s, q }'
