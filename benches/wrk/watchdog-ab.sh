#!/usr/bin/env bash
# Two watchdog binaries in http mode side by side, each in front of its own faas-fixture
# (echo), measured in alternating rounds of wrk (a small POST): req/s and the watchdog's own
# CPU time per request (its threads only, not the fixture's). Alternating short rounds keep
# the machine's drift out of the comparison; read the per-round ratios, not one round.
# Everything listens on 127.0.0.1 only.
#
# Usage: benches/wrk/watchdog-ab.sh A_WATCHDOG B_WATCHDOG [rounds] [duration] [connections]
#        (defaults 8 5s 32; the fixture from $CARGO_TARGET_DIR/release, default target/release;
#        needs `wrk`: apt-get install wrk)
# e.g.   git worktree add /tmp/base main && (cd /tmp/base && CARGO_TARGET_DIR=/tmp/base-target \
#          cargo build --release -p faas-watchdog --bin faas-watchdog)
#        cargo build --release -p faas-watchdog --bins
#        benches/wrk/watchdog-ab.sh /tmp/base-target/release/faas-watchdog target/release/faas-watchdog
set -euo pipefail

[ $# -ge 2 ] || { sed -n '8,14p' "$0" >&2; exit 2; }
A=$1
B=$2
ROUNDS=${3:-8}
DURATION=${4:-5s}
CONNS=${5:-32}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
FIXTURE=${CARGO_TARGET_DIR:-$ROOT/target}/release/faas-fixture
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
for f in "$A" "$B" "$FIXTURE"; do
  [ -x "$f" ] || { echo "not an executable: $f (cargo build --release -p faas-watchdog --bins)" >&2; exit 1; }
done

. "$(dirname "$0")/watchdog-common.sh"

declare -A PID PORT
for v in A B; do
  bin=${!v}
  PORT[$v]=$(free_port)
  up=$(free_port)
  env mode=http fprocess="$FIXTURE" upstream_url="http://127.0.0.1:$up" port="${PORT[$v]}" \
    bind_address=127.0.0.1 FIXTURE_BEHAVIOUR=echo "$bin" >/dev/null 2>&1 &
  PID[$v]=$!
  PIDS+=("$!")
done
for v in A B; do
  wait_ok "http://127.0.0.1:${PORT[$v]}/"
  wrk -t2 -c"$CONNS" -d2s -s "$WORK/post.lua" "http://127.0.0.1:${PORT[$v]}/" >/dev/null
done

echo "A = $A"
echo "B = $B"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk -t2 -c$CONNS -d$DURATION (POST, 15-byte body), $ROUNDS alternating rounds"
echo
echo "| round | A req/s | A own CPU us/req | B req/s | B own CPU us/req | B/A req/s |"
echo "|---|---|---|---|---|---|"
RATIOS=()
for i in $(seq 1 "$ROUNDS"); do
  declare -A RPS CPU
  for v in A B; do
    t0=$(own_ticks "${PID[$v]}")
    out=$(wrk -t2 -c"$CONNS" -d"$DURATION" -s "$WORK/post.lua" "http://127.0.0.1:${PORT[$v]}/")
    t1=$(own_ticks "${PID[$v]}")
    RPS[$v]=$(echo "$out" | awk '/Requests\/sec/{print $2}')
    n=$(echo "$out" | awk '/requests in/{print $1}')
    CPU[$v]=$(awk -v a="$t0" -v b="$t1" -v n="$n" -v t="$TCK" 'BEGIN{printf "%.1f", (b-a)/t*1e6/n}')
  done
  r=$(awk -v a="${RPS[A]}" -v b="${RPS[B]}" 'BEGIN{printf "%.3f", b/a}')
  RATIOS+=("$r")
  echo "| $i | ${RPS[A]} | ${CPU[A]} | ${RPS[B]} | ${CPU[B]} | $r |"
done
echo
printf '%s\n' "${RATIOS[@]}" | sort -n | awk '{a[NR]=$1} END{m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "B/A req/s: median %.3f, range %.3f-%.3f over %d rounds\n", m, a[1], a[NR], NR}'
