#!/usr/bin/env bash
# Watchdog throughput: (a) fork mode with `cat`, (b) http mode in front of a trivial
# upstream, (c) that upstream alone (the baseline), all in one run, with the same wrk
# settings (a small POST). Everything listens on 127.0.0.1 only.
#
# Besides wrk's figures each row gives the CPU time per request of the server (the process
# and all its descendants: the fork-mode processes once reaped, the http-mode upstream), of
# that the server's own threads' (the watchdog without the processes it starts), and of wrk
# itself, from /proc and getrusage: on a shared machine throughput depends on what else
# runs, CPU per request much less.
#
# (e) is the floor of any proxy on this machine (`proxy-floor`, in the faas-benches crate: a
# byte relay with one upstream connection per client connection and nothing else, as many
# threads as the watchdog) in front of the same upstream as (c): http mode (b) against it
# says how much of the gap to the bare upstream any proxy pays here.
#
# Then (d) the machine's own spawn ceiling (`benches/wrk/spawn_ceiling.c`: what fork mode
# does per request, with no HTTP, on as many threads as the machine has cores) and the ratio
# of (a) to it: the target of issue #19 is fork mode >= 0.8x that ceiling, same run.
#
# Usage: benches/wrk/watchdog.sh [duration] [connections] [threads]
#        (defaults 10s 32 2; needs `wrk` from Debian: apt-get install wrk)
# Env:   ROUNDS=N (default 0) adds N rounds of (c), (b), (e) back to back, ROUND_DURATION
#        each (default 5s), and their median ratios.
# Env:   CARGO_TARGET_DIR (default target), SKIP_BUILD=1 to use existing release binaries.
set -euo pipefail

DURATION=${1:-10s}
CONNS=${2:-32}
THREADS=${3:-2}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  (cd "$ROOT" && cargo build --release -p faas-watchdog --bins -p faas-benches --bin proxy-floor)
fi

. "$(dirname "$0")/watchdog-common.sh"

# Clock ticks (user+system, own and reaped children) of a process and its live descendants.
tree_ticks() {
  local p=$1 t=0 c
  # (a child may exit while this runs: then it counts as 0 here and in its parent's
  # reaped-children figures once reaped)
  t=$(awk '{sub(/.*\) /,""); print $12+$13+$14+$15}' "/proc/$p/stat" 2>/dev/null) || true
  t=${t:-0}
  for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do t=$((t + $(tree_ticks "$c"))); done
  echo "$t"
}

LAST_RPS=0
run() { # label url server-pid
  local out t0 t1 o0 o1
  t0=$(tree_ticks "$3")
  o0=$(own_ticks "$3")
  out=$( { /usr/bin/time -f "WRKCPU %U %S" \
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$WORK/post.lua" "$2"; } 2>&1)
  t1=$(tree_ticks "$3")
  o1=$(own_ticks "$3")
  local rps p50 p99 errs reqs wcpu
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  LAST_RPS=$rps
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  wcpu=$(awk '/WRKCPU/ {print $2+$3}' <<<"$out")
  errs=$(grep -E 'Non-2xx|Socket errors' <<<"$out" | tr '\n' ' ' || true)
  printf '| %s | %s | %s | %s | %s | %.1f | %.1f | %.1f |\n' "$1" "$rps" "$p50" "$p99" \
    "${errs:-none}" \
    "$(awk -v t="$((t1 - t0))" -v k="$TCK" -v n="$reqs" 'BEGIN {print t / k * 1e6 / n}')" \
    "$(awk -v t="$((o1 - o0))" -v k="$TCK" -v n="$reqs" 'BEGIN {print t / k * 1e6 / n}')" \
    "$(awk -v w="$wcpu" -v n="$reqs" 'BEGIN {print w * 1e6 / n}')"
}

UP=$(free_port); WD_HTTP=$(free_port); WD_FORK=$(free_port); WD_FORK2=$(free_port)

# (c) the bare upstream: faas-fixture (a hyper server) echoing the body.
port=$UP FIXTURE_BEHAVIOUR=echo "$BIN/faas-fixture" >/dev/null 2>&1 &
PIDS+=($!); PID_C=$!
# (b) the watchdog in http mode in front of its own fixture (it starts the fixture itself).
UP2=$(free_port)
env mode=http fprocess="$BIN/faas-fixture" upstream_url="http://127.0.0.1:$UP2" \
  FIXTURE_BEHAVIOUR=echo port=$WD_HTTP bind_address=127.0.0.1 prefix_logs=false \
  "$BIN/faas-watchdog" >/dev/null 2>&1 &
PIDS+=($!); PID_B=$!
# (a) the watchdog in fork (streaming) mode with cat.
env mode=streaming fprocess=cat port=$WD_FORK bind_address=127.0.0.1 \
  "$BIN/faas-watchdog" >/dev/null 2>&1 &
PIDS+=($!); PID_A=$!
# (a2) the same with prefix_logs=false (stderr inherited: no pipe, no log task).
env mode=streaming fprocess=cat prefix_logs=false port=$WD_FORK2 bind_address=127.0.0.1 \
  "$BIN/faas-watchdog" >/dev/null 2>&1 &
PIDS+=($!); PID_A2=$!

# (e) the byte relay in front of (c)'s upstream.
PF=$(free_port)
"$BIN/proxy-floor" "127.0.0.1:$PF" "127.0.0.1:$UP" >/dev/null 2>&1 &
PIDS+=($!); PID_E=$!

wait_ok "http://127.0.0.1:$UP/"
wait_ok "http://127.0.0.1:$PF/"
wait_ok "http://127.0.0.1:$WD_HTTP/"
wait_ok "http://127.0.0.1:$WD_FORK/"
wait_ok "http://127.0.0.1:$WD_FORK2/"

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
echo "wrk -t$THREADS -c$CONNS -d$DURATION --latency -s post.lua (POST, 15-byte body)"
echo
echo "| what | req/s | p50 | p99 | errors | server CPU us/req | of which its own threads | wrk CPU us/req |"
echo "|---|---|---|---|---|---|---|---|"
run "(a) fork mode, fprocess=cat" "http://127.0.0.1:$WD_FORK/" "$PID_A"
FORK_RPS=$LAST_RPS
run "(a2) fork mode, fprocess=cat, prefix_logs=false" "http://127.0.0.1:$WD_FORK2/" "$PID_A2"
run "(b) http mode -> faas-fixture" "http://127.0.0.1:$WD_HTTP/" "$PID_B"
HTTP_RPS=$LAST_RPS
run "(c) faas-fixture alone (baseline)" "http://127.0.0.1:$UP/" "$PID_C"
BARE_RPS=$LAST_RPS
run "(e) byte relay -> faas-fixture (the floor of a proxy)" "http://127.0.0.1:$PF/" "$PID_E"
FLOOR_RPS=$LAST_RPS
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

# (d) the spawn ceiling: fork mode's process work alone, one thread per core, same `cat`.
command -v cc >/dev/null || { echo "cc is missing: apt-get install gcc" >&2; exit 1; }
cc -O2 -o "$WORK/spawn_ceiling" "$ROOT/benches/wrk/spawn_ceiling.c" -lpthread
# (GNU time's user + system CPU includes the reaped `cat`s, like the server column above.)
CEIL_OUT=$( { /usr/bin/time -f "CEILCPU %U %S" \
  "$WORK/spawn_ceiling" "$(nproc)" 2000 "$(command -v cat)"; } 2>&1)
CEIL=$(awk '/spawns\/s/ {print $(NF-1)}' <<<"$CEIL_OUT")
CEIL_CPU=$(awk -v n="$(( $(nproc) * 2000 ))" '/CEILCPU/ {printf "%.1f", ($2 + $3) * 1e6 / n}' \
  <<<"$CEIL_OUT")
echo "(d) spawn ceiling, $(nproc) threads x 2000 spawns of cat, no HTTP: $CEIL spawns/s," \
  "$CEIL_CPU us CPU per spawn"
awk -v a="$FORK_RPS" -v c="$CEIL" 'BEGIN {
  printf "fork mode (a) / spawn ceiling (d): %.2fx (target >= 0.8x)\n", a / c }'
awk -v b="$HTTP_RPS" -v c="$BARE_RPS" -v e="$FLOOR_RPS" 'BEGIN {
  printf "http mode (b) / bare (c): %.2fx (target >= 0.5x); byte relay (e) / bare (c): %.2fx; (b) / (e): %.2fx\n", b / c, e / c, b / e }'

# Optional: ROUNDS more rounds of (c), (b) and (e) back to back, ROUND_DURATION each (the
# http-mode ratio of one run moves with the bare run as much as with the watchdog: rounds
# taken close together, read at their median, move less).
if [ "${ROUNDS:-0}" -gt 0 ]; then
  echo
  echo "$ROUNDS rounds of (c), (b), (e), ${ROUND_DURATION:-5s} each"
  echo
  echo "| round | (c) bare | (b) http mode | (e) byte relay | (b)/(c) | (e)/(c) | (b)/(e) |"
  echo "|---|---|---|---|---|---|---|"
  rps() { wrk -t"$THREADS" -c"$CONNS" -d"${ROUND_DURATION:-5s}" -s "$WORK/post.lua" "$1" |
    awk '/Requests\/sec/ {print $2}'; }
  for i in $(seq 1 "$ROUNDS"); do
    c=$(rps "http://127.0.0.1:$UP/")
    b=$(rps "http://127.0.0.1:$WD_HTTP/")
    e=$(rps "http://127.0.0.1:$PF/")
    awk -v i="$i" -v b="$b" -v c="$c" -v e="$e" 'BEGIN {
      printf "| %d | %s | %s | %s | %.3f | %.3f | %.3f |\n", i, c, b, e, b / c, e / c, b / e }'
  done | tee "$WORK/rounds"
  median() { # column
    awk -F'|' -v k="$1" '{gsub(/ /, "", $k); print $k}' "$WORK/rounds" | sort -n |
      awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'
  }
  echo
  echo "medians over the rounds: (b)/(c) $(median 6)x (target >= 0.5x); (e)/(c) $(median 7)x; (b)/(e) $(median 8)x"
fi
