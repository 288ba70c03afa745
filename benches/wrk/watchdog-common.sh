# Sourced by watchdog.sh and watchdog-ab.sh: a work directory removed on exit with the
# processes in PIDS, the small POST both send, and helpers.

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body   = "hello, watchdog"
wrk.headers["Content-Type"] = "text/plain"
LUA

TCK=$(getconf CLK_TCK)

# Clock ticks (user+system) of the process's own threads, without its children.
own_ticks() { awk '{sub(/.*\) /,""); print $12+$13}' "/proc/$1/stat" 2>/dev/null || echo 0; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_ok() { # url
  for _ in $(seq 1 300); do
    if curl -fsS -o /dev/null -X POST --data x "$1" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "not answering: $1" >&2; exit 1
}
