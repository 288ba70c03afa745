#!/usr/bin/env bash
# The CPU floor of the unmodified `lambda_http` client (issue #17's lambda/http target):
# `lambda-web` against a minimal Runtime API (answers at once, keep-alive, Content-Length),
# against `web-http` (the same handler as a plain HTTP server) called over one keep-alive
# connection; one call at a time, no gateway, no watchdog. CPU time per call from
# /proc/PID/stat. See `lambda-api-floor`'s docs.
#
#   benches/wrk/lambda-floor.sh [N] [WARMUP]   (defaults 20000 2000)
#
# Targets only 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."
nice -n 10 cargo build --release -q -p faas-lambda-fns --bin lambda-api-floor --bin lambda-web --bin web-http
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores"
"${CARGO_TARGET_DIR:-target}/release/lambda-api-floor" "${1:-20000}" "${2:-2000}"
