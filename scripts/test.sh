#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh Debian machine (Docker,
# Chromium + chromedriver for the portal test, busybox-static for test images, docker-registry
# for the image-pull tests, awslambdaric for the Lambda test), starts dockerd, then runs every
# test of the workspace. The Swarm tests initialise a one-node swarm on 127.0.0.1 themselves
# when the engine is in none, and the last of them leaves it again.
#
# Usage: scripts/test.sh [extra nextest/cargo-test args]
# A test that needs Docker or Chromium fails when that is missing (never skips, CI or not).
# Tests that cannot run on a fresh machine (live Kubernetes) are #[ignore]d: nextest lists
# them as skipped, never as passed; the README says how to run them.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v busybox >/dev/null 2>&1 || [ -x /bin/busybox ] || need_pkgs+=(busybox-static)
command -v chromium >/dev/null 2>&1 || need_pkgs+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_pkgs+=(chromium-driver)
# The image-pull tests push to and pull from a real registry on loopback (started by the
# tests themselves on a free port of 127.0.0.1, never as the package's system service).
[ -x /usr/bin/docker-registry ] || need_pkgs+=(docker-registry)
# The OpenWhisk runtimes of the process backend (python:3, nodejs:20) run on these.
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
command -v node >/dev/null 2>&1 || need_pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || need_pkgs+=(npm)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing ${need_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  else
    echo "!! cannot install ${need_pkgs[*]} (not root or no apt-get); the tests that need them will fail" >&2
  fi
fi

# The Lambda tests run a Python function on awslambdaric, the AWS Lambda runtime interface
# client (PyPI; a wheel for x86_64), unmodified. Without it that test fails, never skips.
if ! python3 -c 'import awslambdaric' >/dev/null 2>&1; then
  echo "== installing awslambdaric"
  python3 -m pip install -q awslambdaric || echo "!! cannot install awslambdaric: the Lambda Python test will fail" >&2
fi
# The official `openwhisk` npm client drives the OpenWhisk API in faas/tests/whisk.rs (which
# fails, never skips, when it is missing): installed from the committed lock file.
if [ ! -d tests/js/node_modules/openwhisk ]; then
  if command -v npm >/dev/null 2>&1; then
    echo "== installing the openwhisk npm client (tests/js)"
    (cd tests/js && npm ci --no-audit --no-fund)
  else
    echo "!! npm is missing: the OpenWhisk client test will fail" >&2
  fi
fi

# Without an engine the Docker tests fail (they never skip); run the rest anyway, so one
# missing part does not hide every other result. What it did is kept in its status file, which
# a failing Docker test prints.
export ENSURE_DOCKER_STATUS="${ENSURE_DOCKER_STATUS:-/tmp/faas-rs-ensure-docker.status}"
rm -f "$ENSURE_DOCKER_STATUS"
bash scripts/ensure-docker.sh || echo "!! Docker is not usable: the Docker tests will fail" >&2

# The gateway library links no backend: embedding it must not compile kube, bollard or
# librdkafka (only the `faas` binary links them).
echo "== checking faas-http's dependency boundary"
if cargo tree -p faas-http -e normal --prefix none | grep -E '^(kube|k8s-openapi|bollard|rdkafka|faas-backend-|faas-watchdog) '; then
  echo "!! faas-http depends on a backend (above); move that code into the faas binary crate" >&2
  exit 1
fi

# The Docker tests put a static faas-watchdog and faas-fixture into a busybox image. Build them
# up front (in their own target dir, so the test processes never wait on cargo's lock).
echo "== building the static watchdog for test images"
CARGO_TARGET_DIR=target/static RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build -p faas-watchdog --bins --target x86_64-unknown-linux-gnu

# Examples that check their own result run too (bounded: each ends by itself).
echo "== running the self-checking examples"
cargo run -q -p faas-examples --example custom_gateway
cargo run -q -p faas-examples --example custom_scheduler -- 1 1000
cargo run -q -p faas-examples --example handler_tests
cargo run -q -p faas-examples --example gateway -- --check
cargo run -q -p faas-examples --example simulate -- 1 500

# Benches are not run here (they take minutes and print numbers, not verdicts), but they must
# compile, so they do not rot. Built in the dev profile, whose artifacts the tests share: the
# same check as `cargo bench --no-run` without optimising the whole workspace a second time
# (which alone would take much of .ci/run's 30 minutes on a 2-core machine).
echo "== compiling the benches"
cargo build --workspace --all-features --benches

# The builds above take minutes: check again that the engine still answers (and start it
# again if it went away) right before the tests that need it.
bash scripts/ensure-docker.sh || echo "!! Docker is not usable: the Docker tests will fail" >&2

# Every feature (the Kafka queue of `faas up` included, on librdkafka's mock cluster), then
# the one test that needs a `faas` binary without Kafka (its refusal names the feature): the
# `kafka` features of `faas` and `faas-http` off (and faas-benches, which turns faas-http's
# on, left out), every other feature of the workspace on, so that the dependencies resolve
# to the same features and are not compiled (and stored) a second time: only faas-http and
# `faas` are rebuilt.
no_kafka_features=$(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
m = json.load(sys.stdin)
off = {("faas", "kafka"), ("faas-http", "kafka")}
print(",".join(sorted(p["name"] + "/" + f for p in m["packages"] for f in p["features"]
                      if f != "default" and (p["name"], f) not in off)))')
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-features --no-fail-fast "$@"
  cargo nextest run --workspace --exclude faas-benches --features "$no_kafka_features" \
    --test cli_queue --no-fail-fast
  cargo test --workspace --all-features --doc
else
  cargo test --workspace --all-features --no-fail-fast "$@"
  cargo test --workspace --exclude faas-benches --features "$no_kafka_features" \
    --test cli_queue --no-fail-fast
fi

# Every fuzz target, briefly (seconds each), so that they keep compiling and the committed
# seeds still pass; `scripts/fuzz.sh` alone runs them longer. FUZZ_SECONDS=0 skips this.
fuzz_secs="${FUZZ_SECONDS:-5}"
if [ "$fuzz_secs" != 0 ]; then
  echo "== fuzzing each target for ${fuzz_secs}s"
  bash scripts/fuzz.sh "$fuzz_secs"
fi
