# Sourced by the scripts beside it: `tansu_start LOG [bare]` starts an empty tansu broker
# (memory storage) on 127.0.0.1:$PORT (`$BROKER`), its output appended to LOG, sets `TANSU`
# to its pid, waits for the port and (unless `bare`) creates the three topics of `faas up
# --queue kafka://...` (tansu creates none on its own): faas-async (8 partitions),
# faas-async-activations (8, compacted) and faas-async-dead-letters (1). Returns 1 if a topic
# could not be created.

tansu_create() { # PARTITIONS TOPIC [ARGS]: retried while the broker is starting (<= 10 s)
  local n=$1 t=$2; shift 2
  for _ in $(seq 1 50); do
    tansu topic create --broker "tcp://$BROKER" --partitions "$n" "$t" "$@" >/dev/null 2>&1 &&
      return 0
    sleep 0.2
  done
  echo "could not create topic $t" >&2; return 1
}

tansu_start() { # LOG [bare]: with `bare`, no topics are created
  tansu broker --listener-url "tcp://$BROKER" --advertised-listener-url "tcp://$BROKER" \
    --storage-engine memory://tansu/ >>"$1" 2>&1 &
  TANSU=$!
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
  [ "${2:-}" = bare ] && return 0
  tansu_create 8 faas-async &&
    tansu_create 8 faas-async-activations --config cleanup.policy=compact &&
    tansu_create 1 faas-async-dead-letters
}
