#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time and fails if any of them crashes.
# Installs what it needs on a fresh Debian machine (a C++ compiler for libFuzzer, cargo-fuzz).
# Works on the stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags, and the
# default sanitizer is none (the code is safe Rust; FUZZ_SANITIZER=address turns ASan on).
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
#   SECONDS  fuzzing time per target (default 60)
#   TARGET   targets to run (default: all, as `cargo fuzz list` gives them)
#
# New inputs go to fuzz/corpus/TARGET (git-ignored; kept between runs), the committed seeds
# are read from fuzz/seeds/TARGET, crashes are written to fuzz/artifacts/TARGET and logs to
# fuzz/logs/TARGET.log. The build goes to fuzz/target.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
[ $# -gt 0 ] && shift
case "$secs" in
  '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac

if ! command -v c++ >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing g++ (libFuzzer is built from C++)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
  else
    echo "!! no C++ compiler (c++) and cannot install one; libFuzzer will not build" >&2
  fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$PWD/fuzz/target"
# A fixed commit for faas-http's build script, so that git activity does not rebuild it.
export FAAS_GIT_SHA="${FAAS_GIT_SHA:-fuzz}"
sanitizer="${FUZZ_SANITIZER:-none}"

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cd fuzz && cargo fuzz list)
fi

echo "== building the fuzz targets (sanitizer: $sanitizer)"
(cd fuzz && cargo fuzz build --sanitizer "$sanitizer" --debug-assertions)

mkdir -p fuzz/logs
failed=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t" "fuzz/artifacts/$t"
  log="fuzz/logs/$t.log"
  echo "== fuzzing $t for ${secs}s"
  start=$(date +%s)
  # -timeout: an input taking over 10 s is a hang; -rss_limit_mb: runaway memory is a crash.
  if (cd fuzz && cargo fuzz run --sanitizer "$sanitizer" --debug-assertions "$t" \
    "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1) \
    >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    echo "   ok: ${runs:-?} inputs in $(($(date +%s) - start))s, corpus $(find "fuzz/corpus/$t" -type f | wc -l) files"
  else
    failed+=("$t")
    echo "!! $t failed after $(($(date +%s) - start))s (log: $log); the end of it:" >&2
    tail -n 40 "$log" >&2
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "!! fuzz targets that crashed: ${failed[*]} (inputs in fuzz/artifacts/TARGET/;" \
    "reproduce with: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none TARGET ARTIFACT)" >&2
  exit 1
fi
echo "== every fuzz target ran ${secs}s without a crash"
